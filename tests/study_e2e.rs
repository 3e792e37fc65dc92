//! End to end: the study example runs a small grid (two tasks, Δ-IFD on
//! and off) as a real process, is stopped with Ctrl-C in its second run,
//! and the same command continues it: the finished run is read back, the
//! stopped one continues from its checkpoint, and the table holds every
//! regime with every seed.

mod common;

use common::{example_named, interrupt, scratch, step_events};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GRID: &str = r#"
[study]
methods = ["sft", "npd"]
seeds = 1
quick = true

[base.train]
steps = 16

[base.output]
checkpoint_every = 2

[grid]
task = ["chain", "orders"]
filter = [true, false]
"#;

fn study(grid: &Path, out: &Path, cache: &Path) -> Command {
    let mut c = Command::new(example_named("study"));
    c.arg(grid)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn a_study_stopped_with_ctrl_c_continues_where_it_stopped() {
    let dir = scratch("study");
    std::fs::create_dir_all(&dir).unwrap();
    let grid = dir.join("grid.toml");
    std::fs::write(&grid, GRID).unwrap();
    let (out, cache) = (dir.join("out"), dir.join("cache"));

    // Stop the second run (chain, Δ-IFD off: NPD alone) after its first steps.
    let mut child = study(&grid, &out, &cache).spawn().unwrap();
    let second = out.join("runs/chain-no-ifd");
    let start = Instant::now();
    while step_events(&second).len() < 2 {
        if let Some(status) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            panic!(
                "the study ended ({status}) before its second run trained: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(start.elapsed() < Duration::from_secs(900), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    interrupt(&child);
    let stopped = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(130), "{err}");
    assert!(err.contains("Continue with the same command"), "{err}");
    let partial = std::fs::read_to_string(out.join("study.md")).unwrap();
    assert!(partial.contains("1 of 4 runs finished"), "{partial}");

    let again = study(&grid, &out, &cache).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(err.contains("chain: finished earlier"), "{err}");
    assert!(err.contains("chain-no-ifd: continuing"), "{err}");
    assert!(err.contains("orders: starting"), "{err}");
    let table = String::from_utf8_lossy(&again.stdout);
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| chain") || l.starts_with("| orders"))
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    for row in rows {
        // SFT, NPD and NPD without Δ-IFD each have a value; on-policy did
        // not run.
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(
            cells[4..8].iter().filter(|c| **c == "–").count(),
            1,
            "{row}"
        );
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("study.json")).unwrap()).unwrap();
    assert_eq!(results.as_array().unwrap().len(), 4);
    // The stopped run's steps were neither lost nor repeated.
    let steps: Vec<u64> = step_events(&second)
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=16).collect::<Vec<_>>(), "{steps:?}");
    // One teacher per task, each in its own cache folder.
    let mut teachers: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("teacher.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    teachers.sort();
    assert_eq!(teachers.len(), 2, "{teachers:?}");
    assert!(teachers[0].starts_with("v4-chain-") && teachers[1].starts_with("v4-orders-"));

    // Another grid into the same folder is refused, naming the folder.
    let other = dir.join("other.toml");
    std::fs::write(&other, GRID.replace("seeds = 1", "seeds = 2")).unwrap();
    let refused = study(&other, &out, &cache).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("another grid"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A folder of the user's files is refused and left as it was; a grid
/// refused for a bad value writes nothing, so the fixed grid may use the
/// same folder.
#[test]
fn a_study_leaves_a_users_folder_alone_and_a_refused_grid_leaves_no_trace() {
    let dir = scratch("study-foreign");
    let out = dir.join("out");
    std::fs::create_dir_all(out.join("configs")).unwrap();
    let mine = [
        ("study.md", "my notes"),
        ("study.json", "[1]"),
        ("configs/k1.toml", "# mine"),
    ];
    for (name, text) in mine {
        std::fs::write(out.join(name), text).unwrap();
    }
    let grid = dir.join("grid.toml");
    std::fs::write(&grid, GRID).unwrap();
    let refused = study(&grid, &out, &dir.join("cache")).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("holds no study"), "{err}");
    for (name, text) in mine {
        assert_eq!(std::fs::read_to_string(out.join(name)).unwrap(), text);
    }
    assert!(!out.join("study.toml").exists());

    // A bad value in one regime: refused before anything is written.
    let fresh = dir.join("fresh");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        GRID.replace("filter = [true, false]", "keys = { \"train.lr\" = [-1.0] }"),
    )
    .unwrap();
    let refused = study(&bad, &fresh, &dir.join("cache")).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("train.lr"), "{err}");
    assert!(
        std::fs::read_dir(&fresh).map_or(true, |mut e| e.next().is_none()),
        "a refused grid wrote into {}",
        fresh.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
