//! Where a command's program lives, found on `PATH` once and reused, as a shell's command hash
//! does. Without it every spawn of `true` walks `PATH` inside the spawned child (`posix_spawnp`,
//! like `execvp`): one failed `execve` per directory before the right one, eight on a common
//! `PATH`, each a path walk in the kernel.
//!
//! An answer is reused for at most [`FRESH_FOR`], so a program installed earlier on `PATH` is seen
//! within that time; one that vanished makes its spawn fail, and the caller asks again without the
//! cache (`forget`). Only absolute `PATH` entries are cached: an empty or relative entry depends on
//! the task's working directory, so such a `PATH` is left to the spawn itself.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a found path is trusted before `PATH` is searched again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Distinct (program, `PATH`) pairs kept; past it the cache starts afresh. Tasks name programs
/// from outside, so the table must not grow with them.
const MAX_ENTRIES: usize = 256;

pub struct ProgramPaths {
    /// The worker's own `PATH`, read once: a command without `PATH` in its environment sees it.
    inherited: OsString,
    /// By program name, the `PATH`s it was looked up on: where it was found, and when. Looked up
    /// by reference, so a spawn allocates nothing here.
    found: HashMap<String, Vec<Found>>,
    entries: usize,
}

struct Found {
    path: OsString,
    file: PathBuf,
    at: Instant,
}

impl ProgramPaths {
    /// `inherited`: the `PATH` of the worker's environment.
    pub fn new(inherited: OsString) -> Self {
        ProgramPaths {
            inherited,
            found: HashMap::new(),
            entries: 0,
        }
    }

    /// The file `program` names on the `PATH` a command with environment `env` sees, or `None`
    /// to let the spawn search itself: a name with a slash, a `PATH` with a relative entry, no
    /// executable file on it (the spawn then reports the error it always did).
    pub fn resolve(
        &mut self,
        program: &str,
        env: &[(String, String)],
        now: Instant,
    ) -> Option<PathBuf> {
        if program.is_empty() || program.contains('/') {
            return None;
        }
        let path = path_of(&self.inherited, env);
        let cached = self
            .found
            .get(program)
            .and_then(|on| on.iter().find(|f| f.path == path));
        if let Some(f) = cached.filter(|f| now.duration_since(f.at) < FRESH_FOR) {
            return Some(f.file.clone());
        }
        let file = search(program, path)?;
        forget(&mut self.found, &mut self.entries, program, path);
        if self.entries >= MAX_ENTRIES {
            self.found.clear();
            self.entries = 0;
        }
        self.found
            .entry(program.to_string())
            .or_default()
            .push(Found {
                path: path.to_os_string(),
                file: file.clone(),
                at: now,
            });
        self.entries += 1;
        Some(file)
    }

    /// `program` could not be run from where it was found: search again next time.
    pub fn forget(&mut self, program: &str, env: &[(String, String)]) {
        let path = path_of(&self.inherited, env);
        forget(&mut self.found, &mut self.entries, program, path);
    }
}

/// The `PATH` a command sees: its own, if its environment sets one, else the worker's.
fn path_of<'a>(inherited: &'a OsStr, env: &'a [(String, String)]) -> &'a OsStr {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map_or(inherited, |(_, v)| OsStr::new(v))
}

fn forget(
    found: &mut HashMap<String, Vec<Found>>,
    entries: &mut usize,
    program: &str,
    path: &OsStr,
) {
    if let Some(on) = found.get_mut(program) {
        let before = on.len();
        on.retain(|f| f.path != path);
        *entries -= before - on.len();
    }
}

/// The first regular file with an execute bit named `program` in `path`'s directories, as
/// `execvp` would run it; `None` if `path` has a relative entry or holds no such file.
fn search(program: &str, path: &OsStr) -> Option<PathBuf> {
    let dirs: Vec<&[u8]> = path.as_bytes().split(|&b| b == b':').collect();
    if dirs.iter().any(|d| !d.starts_with(b"/")) {
        return None;
    }
    dirs.into_iter()
        .map(|d| Path::new(OsStr::from_bytes(d)).join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        fs::create_dir_all(dir).expect("dir");
        let file = dir.join(name);
        fs::write(&file, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).expect("chmod");
        file
    }

    /// A command environment that sets `PATH`.
    fn env(path: &OsStr) -> Vec<(String, String)> {
        vec![("PATH".into(), path.to_str().expect("utf-8").into())]
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ballast-path-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn finds_the_first_executable_on_path_and_reuses_it_while_fresh() {
        let root = scratch("first");
        let (a, b) = (root.join("a"), root.join("b"));
        fs::create_dir_all(&a).expect("dir");
        fs::write(a.join("tool"), "not executable").expect("write");
        let in_b = executable(&b, "tool");
        let path = OsString::from(format!("{}:{}", a.display(), b.display()));
        let mut paths = ProgramPaths::new(OsString::new());
        let t0 = Instant::now();
        assert_eq!(paths.resolve("tool", &env(&path), t0), Some(in_b.clone()));
        // Installed earlier on PATH: the cached answer holds while fresh, then the new one wins.
        let in_a = executable(&a, "tool");
        assert_eq!(paths.resolve("tool", &env(&path), t0), Some(in_b));
        assert_eq!(
            paths.resolve("tool", &env(&path), t0 + FRESH_FOR),
            Some(in_a)
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn leaves_slashes_relative_entries_and_missing_programs_to_the_spawn() {
        let root = scratch("left");
        executable(&root, "tool");
        let mut paths = ProgramPaths::new(OsString::new());
        let now = Instant::now();
        let abs = OsString::from(root.display().to_string());
        assert_eq!(paths.resolve("./tool", &env(&abs), now), None);
        assert_eq!(paths.resolve("", &env(&abs), now), None);
        assert_eq!(paths.resolve("absent", &env(&abs), now), None);
        let relative = OsString::from(format!("{}::bin", root.display()));
        assert_eq!(
            paths.resolve("tool", &env(&relative), now),
            None,
            "an empty entry is the cwd"
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_forgotten_program_is_searched_again_and_the_table_stays_bounded() {
        let root = scratch("forget");
        let tool = executable(&root, "tool");
        let path = OsString::from(root.display().to_string());
        let mut paths = ProgramPaths::new(OsString::new());
        let now = Instant::now();
        assert_eq!(paths.resolve("tool", &env(&path), now), Some(tool.clone()));
        fs::remove_file(&tool).expect("rm");
        paths.forget("tool", &env(&path));
        assert_eq!(paths.resolve("tool", &env(&path), now), None);
        executable(&root, "tool");
        for i in 0..(MAX_ENTRIES * 2) {
            let other = OsString::from(format!("{}:/nonexistent/{i}", root.display()));
            paths.resolve("tool", &env(&other), now);
        }
        assert!(paths.entries <= MAX_ENTRIES);
        assert_eq!(
            paths.entries,
            paths.found.values().map(Vec::len).sum::<usize>()
        );
        let _ = fs::remove_dir_all(&root);
    }
}
