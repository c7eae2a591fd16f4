use super::*;
use protocol::{Incarnation, TaskRef};

fn run(task: u64, attempt: u32) -> TaskRef {
    TaskRef {
        task: TaskId(task),
        attempt: Attempt(attempt),
        incarnation: Incarnation(1),
    }
}

fn append(store: &mut LogStore, r: TaskRef, offset: u64, bytes: &[u8]) {
    store.apply(LogOp::Append(OutputChunk {
        task: r,
        stream: OutputStream::Stdout,
        offset,
        bytes: bytes.to_vec(),
    }));
}

fn end(store: &mut LogStore, task: u64, attempt: Option<u32>, tail: &str) {
    store.apply(LogOp::End {
        task: TaskId(task),
        attempt: attempt.map(Attempt),
        stdout_tail: tail.into(),
        stderr_tail: String::new(),
    });
}

/// The whole stdout of `task` as `master logs` reads it, piece by piece.
fn read_all(store: &mut LogStore, task: u64, done: bool, tail: &str) -> (Vec<u8>, bool) {
    let mut all = Vec::new();
    loop {
        let op = LogOp::Read {
            conn: ConnId(1),
            task: TaskId(task),
            stream: OutputStream::Stdout,
            offset: all.len() as u64,
            done,
            tail: done.then(|| tail.to_string()),
        };
        let Some((
            _,
            FromMaster::Log {
                bytes,
                done,
                removed,
                ..
            },
        )) = store.apply(op)
        else {
            panic!("a read is answered");
        };
        all.extend_from_slice(&bytes);
        if done || bytes.is_empty() {
            return (all, removed);
        }
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ballast-logs-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_small_output_that_is_its_tail_needs_no_file() {
    let dir = temp_dir("small");
    let mut store = LogStore::open(dir.clone(), LogLimits::default()).unwrap();
    append(&mut store, run(1, 1), 0, b"hello\n");
    assert_eq!(
        read_all(&mut store, 1, false, "").0,
        b"hello\n",
        "while it runs"
    );
    end(&mut store, 1, Some(1), "hello\n");
    assert_eq!(store.total(), 0);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "no file");
    assert_eq!(read_all(&mut store, 1, true, "hello\n").0, b"hello\n");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_large_output_spills_to_its_file_and_survives_a_restart() {
    let dir = temp_dir("large");
    let mut store = LogStore::open(dir.clone(), LogLimits::default()).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut offset = 0;
    for piece in data.chunks(100_000) {
        append(&mut store, run(7, 2), offset, piece);
        offset += piece.len() as u64;
    }
    // A piece sent twice (after a reconnect) counts once.
    append(&mut store, run(7, 2), 0, &data[..10]);
    end(&mut store, 7, Some(2), "tail");
    assert_eq!(read_all(&mut store, 7, true, "tail").0, data);
    drop(store);
    let mut store = LogStore::open(dir.clone(), LogLimits::default()).unwrap();
    store.recover(|t| (t == TaskId(7)).then_some(true));
    assert_eq!(store.total(), data.len() as u64);
    assert_eq!(read_all(&mut store, 7, true, "tail").0, data);
    // Unknown to the journal: removed.
    drop(store);
    let mut store = LogStore::open(dir.clone(), LogLimits::default()).unwrap();
    store.recover(|_| None);
    assert_eq!(store.total(), 0);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn past_the_limit_bytes_are_counted_and_one_line_says_so() {
    let limits = LogLimits {
        per_stream: 10,
        budget: 1 << 20,
    };
    let mut store = LogStore::in_memory(limits);
    append(&mut store, run(1, 1), 0, b"0123456789abcdef");
    append(&mut store, run(1, 1), 16, b"ghij");
    end(&mut store, 1, Some(1), "");
    let (all, _) = read_all(&mut store, 1, true, "");
    let text = String::from_utf8(all).unwrap();
    let (kept, line) = text.split_at(10);
    assert_eq!(kept, "0123456789");
    assert_eq!(
        line.lines().count(),
        2,
        "a newline, then one line: {text:?}"
    );
    assert!(line.contains("10 more bytes were dropped"), "{text:?}");
}

#[test]
fn a_gap_is_marked_and_a_rerun_starts_afresh() {
    let mut store = LogStore::in_memory(LogLimits::default());
    append(&mut store, run(1, 1), 0, b"first run\n");
    append(&mut store, run(1, 2), 0, b"a\n");
    append(&mut store, run(1, 2), 10, b"b\n");
    assert!(read_all(&mut store, 1, false, "")
        .0
        .starts_with(b"a\n[ballast: 8 bytes"));
    end(&mut store, 1, Some(2), "");
    let (all, _) = read_all(&mut store, 1, true, "");
    assert!(!String::from_utf8_lossy(&all).contains("first run"));
    assert!(all.ends_with(b"b\n"));
}

#[test]
fn the_budget_removes_the_oldest_finished_logs_first() {
    let limits = LogLimits {
        per_stream: 1 << 20,
        budget: 250,
    };
    let mut store = LogStore::in_memory(limits);
    for task in 1..=3 {
        append(&mut store, run(task, 1), 0, &[b'x'; 100]);
        end(&mut store, task, Some(1), "");
    }
    assert!(store.total() <= 250);
    let (tail, removed) = read_all(&mut store, 1, true, "xx");
    assert!(removed, "task 1 went first");
    assert_eq!(tail, b"xx", "its tail is what is left");
    assert_eq!(read_all(&mut store, 3, true, "").0, vec![b'x'; 100]);
    // A running task's log is never removed: new bytes past the budget are dropped instead.
    append(&mut store, run(4, 1), 0, &[b'y'; 300]);
    assert!(store.total() <= 250);
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("10G"), Ok(10 << 30));
    assert_eq!(parse_size("500k"), Ok(500 << 10));
    assert_eq!(parse_size("1234"), Ok(1234));
    assert_eq!(parse_size("1.5K"), Ok(1536));
    assert!(parse_size("lots").is_err());
    assert!(parse_size("5X").is_err());
}

#[test]
fn a_chunk_whose_offset_overflows_is_dropped_not_a_panic() {
    // A worker's `offset` is outside input: offset + len past u64::MAX panicked the master in a
    // debug build (and wrapped `received` in a release one, so every later byte was skipped).
    let mut store = LogStore::in_memory(LogLimits::default());
    append(&mut store, run(3, 1), u64::MAX - 2, b"0123456789");
    append(&mut store, run(3, 1), 0, b"hello\n");
    assert_eq!(read_all(&mut store, 3, false, "").0, b"hello\n");
}

#[test]
fn a_small_log_missing_its_start_after_a_restart_is_its_tail() {
    // The master held "abc\n" in memory and died; the worker went on from offset 4 and its
    // result's tail has the whole output. `master logs` printed the gap line and "def\n" only.
    let mut store = LogStore::in_memory(LogLimits::default());
    append(&mut store, run(5, 1), 4, b"def\n");
    end(&mut store, 5, Some(1), "abc\ndef\n");
    assert_eq!(read_all(&mut store, 5, true, "abc\ndef\n").0, b"abc\ndef\n");
    assert_eq!(store.total(), 0, "nothing kept twice");
}

/// What a reader learns of the run it reads: the tail of a one-run task is that run's (no
/// switch), a retry whose small log is its tail names its run, so a follower of the first
/// run starts afresh instead of printing the tail from the old run's offset.
#[test]
fn a_read_names_the_run_that_counts_even_when_its_log_is_its_tail() {
    let attempt_of = |store: &mut LogStore, task: u64, tail: &str| match store.apply(LogOp::Read {
        conn: ConnId(1),
        task: TaskId(task),
        stream: OutputStream::Stdout,
        offset: 0,
        done: true,
        tail: Some(tail.into()),
    }) {
        Some((_, FromMaster::Log { attempt, .. })) => attempt,
        other => panic!("a read is answered: {other:?}"),
    };
    let mut store = LogStore::in_memory(LogLimits::default());
    append(&mut store, run(1, 1), 0, b"one\n");
    end(&mut store, 1, Some(1), "one\n");
    assert_eq!(
        attempt_of(&mut store, 1, "one\n"),
        None,
        "the same run's tail"
    );
    append(&mut store, run(2, 1), 0, b"first run, longer\n");
    append(&mut store, run(2, 2), 0, b"second\n");
    end(&mut store, 2, Some(2), "second\n");
    assert_eq!(attempt_of(&mut store, 2, "second\n"), Some(Attempt(2)));
    append(&mut store, run(3, 1), 0, b"a loser\n");
    end(&mut store, 3, Some(2), "");
    assert_eq!(
        attempt_of(&mut store, 3, ""),
        Some(Attempt(2)),
        "a silent winner"
    );
}

#[test]
fn forgotten_tasks_lose_their_files() {
    let dir = temp_dir("forget");
    let mut store = LogStore::open(dir.clone(), LogLimits::default()).unwrap();
    // Past the spill size, so each has its file.
    let big = vec![b'x'; SPILL_BYTES + 10];
    for task in 1..=3 {
        append(&mut store, run(task, 1), 0, &big);
        end(&mut store, task, Some(1), "");
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 3);
    store.apply(LogOp::Forget {
        ranges: vec![(TaskId(1), TaskId(2))],
    });
    let left: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["3.1.stdout".to_string()]);
    assert_eq!(store.total(), big.len() as u64);
    let _ = fs::remove_dir_all(&dir);
}
