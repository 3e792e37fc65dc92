//! Tests of the study: grid expansion, bad files, the table.
use super::*;

const GRID: &str = r#"
[study]
methods = ["sft", "on-policy", "npd"]
seeds = 3

[base.train]
steps = 50

[grid]
task = ["chain", "orders"]
warm_start = ["plateau"]
filter = [true, false]
"#;

#[test]
fn several_grids_run_one_after_the_other() {
    let text = r#"
[study]
methods = ["npd"]
seeds = 1

[[grid]]
task = ["chain"]
student = [[64, 2]]

[[grid]]
task = ["orders"]
student = [[32, 1]]
warm_start = ["plateau"]
"#;
    let runs = StudyFile::parse(text, "g.toml").unwrap().runs();
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["chain-64x2", "orders-plateau-32x1"]);
    let err = format!(
        "{:#}",
        StudyFile::parse(&text.replace("[[32, 1]]", "[[32]]"), "g.toml").unwrap_err()
    );
    assert!(err.contains("g.toml") && err.contains("grid"), "{err}");
}

#[test]
fn every_axis_reaches_its_key() {
    let text = r#"
[study]
methods = ["on-policy", "npd"]
seeds = 2

[grid]
max_ops = [8, 24]
student = [[32, 1]]
loss = ["jsd"]
temperature = [0.7]
refresh_every = [5]
schedule = ["colocated", "disaggregated"]
"#;
    let runs = StudyFile::parse(text, "g.toml").unwrap().runs();
    assert_eq!(runs.len(), 4);
    assert_eq!(runs[1].name, "len8-32x1-jsd-t0.7-k5-disaggregated");
    let c: toml::Table = toml::from_str(&runs[1].config).unwrap();
    assert_eq!(c["embedded"]["max_ops"].as_integer(), Some(8));
    assert_eq!(c["embedded"]["student"].as_array().unwrap().len(), 2);
    assert_eq!(c["train"]["loss"].as_str(), Some("jsd"));
    assert_eq!(c["sampling"]["temperature"].as_float(), Some(0.7));
    assert_eq!(c["rollout"]["refresh_every"].as_integer(), Some(5));
    assert_eq!(c["rollout"]["schedule"].as_str(), Some("disaggregated"));
    // Every generated configuration is a valid run configuration.
    for run in &runs {
        crate::RunConfig::from_toml(&run.config, &run.name).unwrap();
    }
}

#[test]
fn a_grid_expands_to_regimes_and_filter_runs() {
    let file = StudyFile::parse(GRID, "g.toml").unwrap();
    let runs = file.runs();
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "chain-plateau",
            "chain-plateau-no-ifd",
            "orders-plateau",
            "orders-plateau-no-ifd"
        ]
    );
    assert_eq!(runs[0].methods, Method::DISTILLATION.to_vec());
    assert_eq!(runs[1].methods, vec![Method::NearPolicy]);
    let config: toml::Table = toml::from_str(&runs[3].config).unwrap();
    assert_eq!(config["embedded"]["task"].as_str(), Some("orders"));
    assert_eq!(config["embedded"]["warm_start"].as_str(), Some("plateau"));
    assert_eq!(config["filter"]["enabled"].as_bool(), Some(false));
    assert_eq!(config["train"]["steps"].as_integer(), Some(50));
}

#[test]
fn bad_study_files_are_named() {
    for (text, needle) in [
        ("[study]\nmethods = [\"sft\"]\nseeds = 0\n", "study.seeds"),
        ("[study]\nmethods = [\"dpo\"]\nseeds = 1\n", "dpo"),
        (
            "[study]\nmethods = [\"sft\"]\nseeds = 1\n[grid]\ntask = [\"sort\"]\n",
            "sort",
        ),
        (
            "[study]\nmethods = [\"sft\"]\nseeds = 1\n[grid]\nloss = []\n",
            "grid.loss",
        ),
        ("[study]\nmethods = [\"sft\"]\nseed = 1\n", "seed"),
        (
            "[study]\nmethods = [\"npd\", \"npd\"]\nseeds = 1\n",
            "twice",
        ),
    ] {
        let err = format!("{:#}", StudyFile::parse(text, "g.toml").unwrap_err());
        assert!(
            err.contains("g.toml") && err.contains(needle),
            "{text}: {err}"
        );
    }
}

#[test]
fn the_table_gives_mean_spread_and_differences() {
    let file = StudyFile::parse(GRID, "g.toml").unwrap();
    let cell = |a: &[f64]| Cell {
        accuracy: a.to_vec(),
        wall_s: vec![10.0; a.len()],
        ..Cell::default()
    };
    let result = |filter: bool, methods: Vec<(&str, Cell)>| RunResult {
        name: String::new(),
        regime: "chain-plateau".into(),
        axes: vec![("task".into(), "chain".into())],
        filter,
        teacher_accuracy: 0.9,
        warm_start_accuracy: 0.5,
        warm_start: String::new(),
        methods: methods
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    };
    let results = [
        result(
            true,
            vec![
                ("SFT", cell(&[0.5, 0.6, 0.7])),
                ("on-policy", cell(&[0.7, 0.7, 0.7])),
                ("NPD", cell(&[0.65, 0.7, 0.75])),
            ],
        ),
        result(false, vec![("NPD", cell(&[0.6, 0.6, 0.6]))]),
    ];
    let t = table(&file, &results);
    let row = t.lines().last().unwrap();
    assert!(row.contains("60.0 ± 10.0 (50.0–70.0)"), "{row}");
    assert!(row.contains("| +10.0 | +0.0 | +10.0 |"), "{row}");
    assert!(row.ends_with("| 10 / 10 / 10 / 10 | 1.00 |"), "{row}");
    assert_eq!(t.lines().filter(|l| l.starts_with("| chain")).count(), 1);
}

/// The grids the docs tell users to run (every `docs/*.toml` with a
/// `[study]` section) parse, and every regime's run configuration passes the
/// same checks `study()` makes before its first run.
#[test]
fn documented_grids_are_valid() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let dir = std::env::temp_dir().join(format!("npd-doc-grids-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if path.extension().is_none_or(|e| e != "toml") || !text.contains("[study]") {
            continue;
        }
        let grid = StudyFile::read(&path).unwrap_or_else(|e| panic!("{e:#}"));
        for run in grid.runs() {
            let config = dir.join(format!("{}.toml", run.name));
            std::fs::write(&config, &run.config).unwrap();
            let options = grid.options(&run, config, dir.join(&run.name), None);
            crate::configure(&options)
                .unwrap_or_else(|e| panic!("{}: regime {}: {e:#}", path.display(), run.name));
        }
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    std::fs::remove_dir_all(&dir).unwrap();
    checked.sort();
    assert_eq!(
        checked,
        [
            "diagnosis.toml",
            "lengths.toml",
            "plateau.toml",
            "regimes.toml",
            "sampled-rkl.toml",
            "schedules.toml",
            "study.toml",
            "threads.toml"
        ]
    );
}

/// Any run-configuration key is an axis: its values reach the run's
/// configuration, the regime's name and the table's column; a key that is
/// not `section.key`, or has no values, is refused by name; a value the
/// key does not take is refused when the run is configured.
#[test]
fn any_configuration_key_is_an_axis() {
    let file = StudyFile::parse(
        "[study]\nmethods = [\"on-policy\"]\nseeds = 1\n\
         [grid]\nkeys = { \"train.lr\" = [1e-4, 3e-4], \"sampling.top_k\" = [5] }\n",
        "g.toml",
    )
    .unwrap();
    let runs = file.runs();
    assert_eq!(runs.len(), 2);
    let config: toml::Table = toml::from_str(&runs[0].config).unwrap();
    assert_eq!(config["sampling"]["top_k"].as_integer(), Some(5));
    assert_eq!(config["train"]["lr"].as_float(), Some(1e-4));
    assert!(runs[0].name.contains("lr0.0001"), "{}", runs[0].name);
    assert!(
        (runs[1].axes.iter()).any(|(k, v)| k == "train.lr" && v == "0.0003"),
        "{:?}",
        runs[1].axes
    );
    for (bad, what) in [
        ("keys = { \"lr\" = [1e-4] }", "section.key"),
        ("keys = { \"train.lr\" = [] }", "is empty"),
    ] {
        let err = StudyFile::parse(
            &format!("[study]\nmethods = [\"npd\"]\nseeds = 1\n[grid]\n{bad}\n"),
            "g.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("g.toml") && err.contains(what), "{err}");
    }
    let file = StudyFile::parse(
        "[study]\nmethods = [\"npd\"]\nseeds = 1\n[grid]\nkeys = { \"train.lr\" = [-1.0] }\n",
        "g.toml",
    )
    .unwrap();
    let run = &file.runs()[0];
    let dir = std::env::temp_dir().join(format!("npd-key-axis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(&config, &run.config).unwrap();
    let err = crate::configure(&file.options(run, config, dir.join("out"), None))
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("train.lr"), "{err}");
}

/// Every grid key `--help` lists is one the parser takes, and a key it
/// does not list is refused.
#[test]
fn the_help_lists_the_grid_keys_the_parser_takes() {
    let sample = |key: &str| match key {
        "task" => "[\"chain\"]",
        "warm_start" => "[\"plateau\"]",
        "student" => "[[64, 2]]",
        "loss" => "[\"forward-kl\"]",
        "temperature" => "[0.7]",
        "filter" => "[true]",
        "schedule" => "[\"colocated\"]",
        "keys" => "{ \"train.lr\" = [1e-4] }",
        _ => "[4]",
    };
    let help = help();
    for key in GRID_KEYS {
        assert!(help.contains(key), "--help leaves out {key}");
        let text = format!(
            "[study]\nmethods = [\"sft\"]\nseeds = 1\n[grid]\n{key} = {}\n",
            sample(key)
        );
        StudyFile::parse(&text, "g.toml").unwrap_or_else(|e| panic!("{key}: {e:#}"));
    }
    let text = "[study]\nmethods = [\"sft\"]\nseeds = 1\n[grid]\nmax_steps = [4]\n";
    assert!(StudyFile::parse(text, "g.toml").is_err());
}
