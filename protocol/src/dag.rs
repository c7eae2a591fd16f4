//! The dependency graph inside one submission: `After::Spec` references between its specs. The
//! CLI checks a task file with it before it sends anything (so its message can name the lines),
//! and the master checks every `Submit` again (a forged one is refused whole, nothing queued).

use crate::messages::{After, TaskSpec};

/// Why the specs of one submission do not form a DAG. Indices are 0-based spec indices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    /// Spec `spec` waits for spec `target`, which the submission does not have.
    #[error("task {} of the submission waits for task {}, which the submission does not have", spec + 1, u64::from(*target) + 1)]
    UnknownSpec { spec: usize, target: u32 },
    /// The specs wait for each other in a circle: `path` starts and ends with the same spec.
    #[error("task {} of the submission is in a cycle: {}", path[0] + 1, describe(path))]
    Cycle { path: Vec<usize> },
}

fn describe(path: &[usize]) -> String {
    let names: Vec<String> = path.iter().map(|i| format!("task {}", i + 1)).collect();
    names.join(" -> ")
}

/// Checks that every `After::Spec` names a spec of `specs` and that they form no cycle.
/// O(specs + references), with an explicit stack: a chain of a million specs does not recurse.
pub fn check(specs: &[TaskSpec]) -> Result<(), DagError> {
    let n = specs.len();
    let edges = |i: usize| {
        specs[i].after.iter().filter_map(|a| match a {
            After::Spec(j) => Some(*j),
            After::Ids { .. } | After::Job(_) => None,
        })
    };
    for (i, _) in specs.iter().enumerate() {
        if let Some(target) = edges(i).find(|&j| j as usize >= n) {
            return Err(DagError::UnknownSpec { spec: i, target });
        }
    }
    // 0: not seen, 1: on the current path, 2: done.
    let mut color = vec![0u8; n];
    // The current path: (spec, how many of its references were followed).
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for start in 0..n {
        if color[start] != 0 {
            continue;
        }
        color[start] = 1;
        stack.push((start, 0));
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let target = edges(node).nth(*next);
            *next += 1;
            match target.map(|j| j as usize) {
                None => {
                    color[node] = 2;
                    stack.pop();
                }
                Some(j) if color[j] == 1 => {
                    let from = stack.iter().position(|&(s, _)| s == j).unwrap_or(0);
                    let mut path: Vec<usize> = stack[from..].iter().map(|&(s, _)| s).collect();
                    path.push(j);
                    return Err(DagError::Cycle { path });
                }
                Some(j) if color[j] == 0 => {
                    color[j] = 1;
                    stack.push((j, 0));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{TaskId, TaskKind};

    fn spec(after: &[After]) -> TaskSpec {
        let mut s = TaskSpec::new(TaskKind::Sleep { ms: 1 });
        s.after = after.to_vec();
        s
    }

    #[test]
    fn a_dag_passes_and_ids_are_not_edges() {
        let specs = [
            spec(&[After::Spec(2)]),
            spec(&[After::Spec(0), After::Spec(2)]),
            spec(&[After::id(TaskId(1))]),
        ];
        assert_eq!(check(&specs), Ok(()));
    }

    #[test]
    fn cycles_are_found_with_their_path() {
        let specs = [
            spec(&[]),
            spec(&[After::Spec(2)]),
            spec(&[After::Spec(3)]),
            spec(&[After::Spec(1)]),
        ];
        let e = check(&specs).unwrap_err();
        assert_eq!(
            e,
            DagError::Cycle {
                path: vec![1, 2, 3, 1]
            }
        );
        assert!(e.to_string().contains("cycle"), "{e}");
        let selfish = [spec(&[After::Spec(0)])];
        assert_eq!(check(&selfish), Err(DagError::Cycle { path: vec![0, 0] }));
    }

    #[test]
    fn unknown_references_are_refused() {
        let specs = [spec(&[]), spec(&[After::Spec(7)])];
        assert_eq!(
            check(&specs),
            Err(DagError::UnknownSpec { spec: 1, target: 7 })
        );
    }

    #[test]
    fn a_long_chain_does_not_recurse() {
        let specs: Vec<TaskSpec> = (0..200_000u32)
            .map(|i| match i {
                0 => spec(&[]),
                i => spec(&[After::Spec(i - 1)]),
            })
            .collect();
        assert_eq!(check(&specs), Ok(()));
    }
}
