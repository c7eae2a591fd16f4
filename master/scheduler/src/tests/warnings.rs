//! A submission the cluster cannot run now is accepted with a warning, and `status` names the
//! groups that wait for a worker (issue 11).

use super::*;

/// Submits and returns the warnings of the `Submitted` reply.
fn warnings(h: &mut Harness, client: ConnId, specs: Vec<TaskSpec>) -> Vec<String> {
    let out = h.msg(
        client,
        ToMaster::Submit {
            specs,
            count: 1,
            name: None,
        },
    );
    out.into_iter()
        .find_map(|o| match o {
            Output::Send {
                conn,
                msg: FromMaster::Submitted { warnings, .. },
            } if conn == client => Some(warnings),
            _ => None,
        })
        .expect("Submitted reply")
}

fn in_group(group: &str, replicas: u32) -> TaskSpec {
    TaskSpec {
        group: Some(group.into()),
        replicas,
        ..sleep_spec(0)
    }
}

#[test]
fn a_group_without_a_live_worker_is_accepted_with_a_warning() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    h.worker("plain", 2);
    let got = warnings(&mut h, c, vec![in_group("gpu", 1), in_group("gpu", 1)]);
    assert_eq!(
        got,
        ["no live worker is in group gpu: its tasks wait until one joins"],
        "one line per group, however many tasks"
    );
    let status = h.core.status();
    assert_eq!(status.unserved, [("gpu".to_string(), 2)]);
    // A worker of the group joins: no warning, and the status no longer names the group.
    let w = hello(&mut h, "g1", 1, Some("gpu"));
    h.msg(w, ToMaster::Running(Vec::new()));
    assert!(warnings(&mut h, c, vec![in_group("gpu", 1)]).is_empty());
    assert!(h.core.status().unserved.is_empty());
    // Plain tasks, and tasks for any worker, need no warning.
    assert!(warnings(&mut h, c, vec![sleep_spec(0)]).is_empty());
}

#[test]
fn more_replicas_than_live_workers_warns_how_many_copies_run_now() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    h.worker("a", 1);
    h.worker("b", 1);
    let spec = TaskSpec {
        replicas: 3,
        ..sleep_spec(0)
    };
    assert_eq!(
        warnings(&mut h, c, vec![spec]),
        ["--replicas 3, but only 2 live workers can run them: only 2 copies can run now"]
    );
    let w = hello(&mut h, "g1", 1, Some("gpu"));
    h.msg(w, ToMaster::Running(Vec::new()));
    assert_eq!(
        warnings(&mut h, c, vec![in_group("gpu", 2)]),
        ["--replicas 2, but only 1 live worker of group gpu can run them: only 1 copy can run now"]
    );
    let fits = TaskSpec {
        replicas: 3,
        ..sleep_spec(0)
    };
    assert!(
        warnings(&mut h, c, vec![fits]).is_empty(),
        "3 live workers now"
    );
}

/// A submission naming many groups gets a few lines, not one per group.
#[test]
fn warnings_are_bounded() {
    let mut h = Harness::new(PolicyKind::LeastLoaded);
    let c = h.client();
    let specs: Vec<TaskSpec> = (0..100).map(|i| in_group(&format!("g{i}"), 1)).collect();
    let got = warnings(&mut h, c, specs);
    assert_eq!(got.len(), MAX_SUBMIT_WARNINGS);
    assert_eq!(h.core.status().unserved.len(), MAX_UNSERVED_LISTED);
}
