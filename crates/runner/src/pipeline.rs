//! A pipeline definition: stages, their commands, files, dependencies and memory needs, read
//! from TOML and checked whole before anything runs.
//!
//! Every check happens here, at load time: unknown keys, unknown or duplicate stages, cycles,
//! unreadable sizes. A bad file is refused with the value named, before a run folder exists,
//! so bad input can never damage a run. Paths and arguments may use `{topic}`, `{slug}`,
//! `{run_dir}` and `{baton}` (baton's own executable), filled in per run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use baton_base::{parse_duration, parse_size};
use serde::Deserialize;

use crate::RunnerError;
use crate::catalog::{Builtin, StageCatalog};

/// Where a stage runs: the memory layer's one word for it.
pub use baton_memory::DeviceKind;

/// How much memory a stage needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryNeed {
    /// Declared in the pipeline file.
    Declared(u64),
    /// Learned from earlier runs' peaks; `initial` until there is one.
    Learned { initial: u64 },
}

/// What a stage runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageCommand {
    /// A builtin of the program's [`StageCatalog`], resolved when the pipeline was read.
    Builtin(Builtin),
    /// Any program and its arguments, placeholders not yet filled in.
    Argv(Vec<String>),
}

impl StageCommand {
    /// The program and arguments to run, placeholders not yet filled in.
    pub fn argv(&self) -> &[String] {
        match self {
            StageCommand::Argv(argv) => argv,
            StageCommand::Builtin(builtin) => &builtin.argv,
        }
    }
}

/// One stage, checked.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// CPU cores the stage keeps busy when it runs on the host (`threads = N` or `"all"`):
    /// host stages that together would want more cores than the machine has run one after the
    /// other. None: not counted (a stage that says nothing is taken to be light).
    pub threads: Option<Threads>,
    pub name: String,
    pub command: StageCommand,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub after: Vec<String>,
    pub memory: MemoryNeed,
    /// For a stage that adapts to the budget it is granted (`BATON_MEMORY_BUDGET`): the least
    /// it can run in. When its need fits no device it is placed with what the roomiest can give.
    pub memory_min: Option<u64>,
    /// Key under which a learned need is stored (default: the command's program).
    pub model: Option<String>,
    pub device: DeviceKind,
    /// Further attempts after a failure that is not out-of-memory.
    pub retries: u32,
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
    /// Weights files to pull into the page cache while the stages it waits for run, so that
    /// its own load finds them in memory (placeholders allowed). Built-in stages find theirs.
    pub warm: Vec<String>,
    /// Started ahead of its turn, while the stages it waits for run: it prepares (context,
    /// kernels, host-side weights), says `baton:ready`, and waits for the runner's go on the
    /// descriptor `BATON_GO_FD` names (`prestart = true`; built-in stages do by default).
    pub prestart: bool,
}

/// A whole pipeline, checked: every dependency exists and there is no cycle.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub stages: Vec<StageSpec>,
    /// How long a stage may wait for memory before it fails.
    pub wait_timeout: Duration,
    /// How long reclaim may take before the run reports what still holds memory.
    pub reclaim_timeout: Duration,
    /// Further attempts allowed after out-of-memory failures, per stage.
    pub oom_retries: u32,
    /// The TOML text it was read from, kept in the run folder for `baton resume`.
    pub source: String,
    /// The absolute folder of the pipeline file, for `{pipeline_dir}` (empty when built in).
    pub dir: String,
    /// How its stages are submitted under `--executor slurm` (`[slurm]`).
    pub slurm: crate::slurm::SlurmConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    name: Option<String>,
    wait_timeout: Option<String>,
    reclaim_timeout: Option<String>,
    retries: Option<u32>,
    oom_retries: Option<u32>,
    slurm: Option<crate::slurm::SlurmConfig>,
    #[serde(default, rename = "stage")]
    stages: Vec<StageFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageFile {
    name: String,
    command: Option<Vec<String>>,
    builtin: Option<String>,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    outputs: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    memory: Option<String>,
    memory_initial: Option<String>,
    memory_min: Option<String>,
    model: Option<String>,
    device: Option<DeviceKind>,
    retries: Option<u32>,
    timeout: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    warm: Vec<String>,
    threads: Option<ThreadsFile>,
    prestart: Option<bool>,
}

/// `threads` as a pipeline file writes it: a number, or "all".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ThreadsFile {
    Count(u32),
    Word(String),
}

/// How many of the machine's cores a stage keeps busy on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Count(u32),
    /// Every core (an LLM, a diffusion model or an encoder on the CPU).
    All,
}

impl Threads {
    /// The cores this need is on a machine of `cores`.
    pub fn on(self, cores: u32) -> u32 {
        match self {
            Threads::Count(n) => n.min(cores).max(1),
            Threads::All => cores.max(1),
        }
    }
}

impl Pipeline {
    /// Reads and checks a pipeline file; its builtins come from `catalog`.
    pub fn load(path: &Path, catalog: &dyn StageCatalog) -> Result<Pipeline, RunnerError> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            // A path the user gave that leads nowhere is their input, not the machine's.
            std::io::ErrorKind::NotFound
            | std::io::ErrorKind::IsADirectory
            | std::io::ErrorKind::InvalidData => RunnerError::BadPipeline {
                origin: path.display().to_string(),
                why: format!("cannot read it ({e}); check the path"),
            },
            _ => RunnerError::Io {
                action: "cannot read pipeline file",
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        let mut pipeline = Self::parse(&text, &path.display().to_string(), catalog)?;
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        pipeline.dir = std::path::absolute(folder)
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        Ok(pipeline)
    }

    /// Parses and checks pipeline TOML; `origin` names it in errors, `catalog` says what its
    /// builtins are.
    pub fn parse(
        text: &str,
        origin: &str,
        catalog: &dyn StageCatalog,
    ) -> Result<Pipeline, RunnerError> {
        let bad = |why: String| RunnerError::BadPipeline {
            origin: origin.to_string(),
            why,
        };
        let file: PipelineFile = toml::from_str(text)
            .map_err(|e| bad(e.message().to_string() + &location(text, e.span())))?;
        if file.stages.is_empty() {
            return Err(bad("it has no [[stage]]; add at least one".into()));
        }
        let default_retries = file.retries.unwrap_or(1);
        let mut stages = Vec::new();
        for s in file.stages {
            stages.push(check_stage(s, default_retries, catalog).map_err(&bad)?);
        }
        check_graph(&stages).map_err(&bad)?;
        Ok(Pipeline {
            name: file.name.unwrap_or_else(|| "pipeline".into()),
            stages,
            wait_timeout: duration_field(
                "wait_timeout",
                file.wait_timeout.as_deref(),
                Duration::from_secs(600),
            )
            .map_err(&bad)?,
            reclaim_timeout: duration_field(
                "reclaim_timeout",
                file.reclaim_timeout.as_deref(),
                Duration::from_secs(5),
            )
            .map_err(&bad)?,
            oom_retries: file.oom_retries.unwrap_or(3),
            source: text.to_string(),
            dir: String::new(),
            slurm: match file.slurm {
                Some(slurm) => {
                    slurm.check().map_err(&bad)?;
                    slurm
                }
                None => crate::slurm::SlurmConfig::default(),
            },
        })
    }

    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The stages in an order where every stage comes after all it runs after (the file's
    /// order where that already holds). The graph has no cycle: `parse` refused those.
    pub fn in_dependency_order(&self) -> Vec<&StageSpec> {
        let mut placed: Vec<&StageSpec> = Vec::with_capacity(self.stages.len());
        while placed.len() < self.stages.len() {
            let next = self
                .stages
                .iter()
                .find(|s| {
                    !placed.iter().any(|p| p.name == s.name)
                        && s.after.iter().all(|d| placed.iter().any(|p| &p.name == d))
                })
                .expect("a checked pipeline has no cycle");
            placed.push(next);
        }
        placed
    }

    /// Outputs of all stages, as written (placeholders unfilled).
    pub fn produced(&self) -> impl Iterator<Item = &str> {
        self.stages
            .iter()
            .flat_map(|s| s.outputs.iter().map(String::as_str))
    }
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

fn check_stage(
    s: StageFile,
    default_retries: u32,
    catalog: &dyn StageCatalog,
) -> Result<StageSpec, String> {
    let name = s.name.trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "stage name '{}' must be letters, digits, '_' or '-' (it names the stage's log file)",
            s.name
        ));
    }
    let command = match (s.command, s.builtin) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "stage '{name}' has both command and builtin; keep one"
            ));
        }
        (None, None) => {
            return Err(format!(
                "stage '{name}' has neither command nor builtin; add command = [\"program\", \"arg\"]"
            ));
        }
        (Some(argv), None) => {
            if argv.is_empty() || argv[0].trim().is_empty() {
                return Err(format!("stage '{name}' has an empty command"));
            }
            StageCommand::Argv(argv)
        }
        (None, Some(builtin)) => {
            let found = catalog.builtin(&builtin).ok_or_else(|| {
                let names = catalog.names();
                if names.is_empty() {
                    format!(
                        "stage '{name}': unknown builtin '{builtin}'; this program has no builtin stages, use command = [\"program\", \"arg\"]"
                    )
                } else {
                    format!(
                        "stage '{name}': unknown builtin '{builtin}'; use one of {}",
                        names.join(", ")
                    )
                }
            })?;
            StageCommand::Builtin(found)
        }
    };
    let size = |field: &str, value: &str| {
        parse_size(value).map_err(|e| format!("stage '{name}': {field} = \"{value}\": {e}"))
    };
    let memory = match s.memory.as_deref().map(str::trim) {
        None | Some("learn") => MemoryNeed::Learned {
            initial: s
                .memory_initial
                .as_deref()
                .map(|v| size("memory_initial", v))
                .transpose()?
                .unwrap_or(0),
        },
        Some(value) => {
            if s.memory_initial.is_some() {
                return Err(format!(
                    "stage '{name}': memory_initial only applies to memory = \"learn\""
                ));
            }
            MemoryNeed::Declared(size("memory", value)?)
        }
    };
    let memory_min = s
        .memory_min
        .as_deref()
        .map(|v| size("memory_min", v))
        .transpose()?;
    for path in s.inputs.iter().chain(&s.outputs) {
        if path.trim().is_empty() {
            return Err(format!("stage '{name}' lists an empty file path"));
        }
        if !path.starts_with('/')
            && !path.starts_with("{run_dir}")
            && path.split('/').any(|part| part == "..")
        {
            return Err(format!(
                "stage '{name}': file '{path}' climbs out of the run folder; use a path inside it or an absolute one"
            ));
        }
    }
    for output in &s.outputs {
        if output.starts_with('/') {
            return Err(format!(
                "stage '{name}': output '{output}' must be inside the run folder (a relative path)"
            ));
        }
    }
    let threads = match s.threads {
        None => None,
        Some(ThreadsFile::Count(0)) => {
            return Err(format!(
                "stage '{name}': threads = 0; give 1 or more, or \"all\""
            ));
        }
        Some(ThreadsFile::Count(n)) => Some(Threads::Count(n)),
        Some(ThreadsFile::Word(w)) if w == "all" => Some(Threads::All),
        Some(ThreadsFile::Word(w)) => {
            return Err(format!(
                "stage '{name}': threads = \"{w}\"; give a number of cores or \"all\""
            ));
        }
    };
    let device = s.device.unwrap_or(match &command {
        StageCommand::Builtin(builtin) => builtin.device,
        StageCommand::Argv(_) => DeviceKind::Gpu,
    });
    // Built-in stages wait for their go; another program must say it does.
    let prestart = s
        .prestart
        .unwrap_or(matches!(command, StageCommand::Builtin(_)));
    Ok(StageSpec {
        timeout: s
            .timeout
            .as_deref()
            .map(|t| {
                parse_duration(t).map_err(|why| format!("stage '{name}': timeout = \"{t}\": {why}"))
            })
            .transpose()?,
        name,
        command,
        inputs: s.inputs,
        outputs: s.outputs,
        after: s.after,
        memory,
        memory_min,
        model: s.model,
        device,
        retries: s.retries.unwrap_or(default_retries),
        env: s.env,
        warm: s.warm,
        threads,
        prestart,
    })
}

/// Unknown and duplicate stages, then cycles (named along the loop).
fn check_graph(stages: &[StageSpec]) -> Result<(), String> {
    let mut index = HashMap::new();
    for (i, s) in stages.iter().enumerate() {
        if index.insert(s.name.as_str(), i).is_some() {
            return Err(format!(
                "two stages are named '{}'; names must be unique",
                s.name
            ));
        }
    }
    let names = || {
        stages
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for s in stages {
        for dep in &s.after {
            if !index.contains_key(dep.as_str()) {
                return Err(format!(
                    "stage '{}' runs after '{dep}', which is not a stage of this pipeline (stages: {})",
                    s.name,
                    names()
                ));
            }
            if dep == &s.name {
                return Err(format!("stage '{}' runs after itself", s.name));
            }
        }
    }
    // Depth-first search; a node met again while on the stack closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    fn visit(
        i: usize,
        stages: &[StageSpec],
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Result<(), String> {
        marks[i] = Mark::OnStack;
        stack.push(i);
        for dep in &stages[i].after {
            let j = index[dep.as_str()];
            match marks[j] {
                Mark::OnStack => {
                    let from = stack.iter().position(|&k| k == j).unwrap_or(0);
                    let mut path: Vec<&str> = stack[from..]
                        .iter()
                        .map(|&k| stages[k].name.as_str())
                        .collect();
                    path.push(stages[j].name.as_str());
                    return Err(format!(
                        "dependency cycle: {}; break it by removing one 'after'",
                        path.join(" → ")
                    ));
                }
                Mark::New => visit(j, stages, index, marks, stack)?,
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        Ok(())
    }
    let mut marks = vec![Mark::New; stages.len()];
    for i in 0..stages.len() {
        if marks[i] == Mark::New {
            visit(i, stages, &index, &mut marks, &mut Vec::new())?;
        }
    }
    Ok(())
}

fn duration_field(field: &str, value: Option<&str>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(v) => parse_duration(v).map_err(|why| format!("{field} = \"{v}\": {why}")),
    }
}

/// Fills `{topic}`, `{slug}`, `{run_dir}`, `{pipeline_dir}` and `{baton}` in one argument or
/// path, in one pass: a value put in is never read again, so a topic that contains
/// `{run_dir}` reaches the stage as the user wrote it. Any other `{…}` is left as it is.
pub fn fill(text: &str, vars: &Placeholders) -> String {
    let names: [(&str, &str); 5] = [
        ("{topic}", &vars.topic),
        ("{slug}", &vars.slug),
        ("{run_dir}", &vars.run_dir),
        ("{pipeline_dir}", &vars.pipeline_dir),
        ("{baton}", &vars.baton),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match names.iter().find(|(name, _)| rest.starts_with(name)) {
            Some((name, value)) => {
                out.push_str(value);
                rest = &rest[name.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The values placeholders take in one run.
#[derive(Debug, Clone)]
pub struct Placeholders {
    pub topic: String,
    pub slug: String,
    pub run_dir: String,
    /// The folder the pipeline file was in, so stages can name scripts beside it.
    pub pipeline_dir: String,
    pub baton: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::NoBuiltins;

    const GOOD: &str = r#"
name = "mock"
reclaim_timeout = "500ms"
[[stage]]
name = "llm"
command = ["{baton}", "sim", "hold", "4GiB", "--seconds", "0.1"]
outputs = ["1_scripts/{slug}.json"]
memory = "12 GB"
[[stage]]
name = "images"
command = ["python3", "draw.py"]
after = ["llm"]
inputs = ["1_scripts/{slug}.json"]
memory = "learn"
memory_initial = "2GiB"
device = "gpu"
retries = 3
"#;

    /// A catalog with one builtin, `hold`, which runs on the CPU.
    struct Holder;

    impl StageCatalog for Holder {
        fn builtin(&self, name: &str) -> Option<Builtin> {
            (name == "hold").then(|| Builtin {
                name: "hold".into(),
                argv: vec!["{baton}".into(), "sim".into(), "hold".into(), "1GiB".into()],
                device: DeviceKind::Cpu,
            })
        }

        fn names(&self) -> Vec<String> {
            vec!["hold".into()]
        }

        fn weights(&self, _: &str, _: &BTreeMap<String, String>) -> Vec<std::path::PathBuf> {
            Vec::new()
        }
    }

    #[test]
    fn builtins_come_from_the_catalog() {
        let text = "[[stage]]\nname='a'\nbuiltin='hold'\n[[stage]]\nname='b'\nbuiltin='hold'\ndevice='gpu'\n";
        let p = Pipeline::parse(text, "p", &Holder).unwrap();
        assert_eq!(p.stages[0].command.argv()[1..], ["sim", "hold", "1GiB"]);
        // The catalog's device, unless the file says otherwise.
        assert_eq!(p.stages[0].device, DeviceKind::Cpu);
        assert_eq!(p.stages[1].device, DeviceKind::Gpu);
        let err = Pipeline::parse("[[stage]]\nname='a'\nbuiltin='paint'\n", "p", &Holder)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown builtin 'paint'; use one of hold"),
            "{err}"
        );
        let err = Pipeline::parse(text, "p", &NoBuiltins)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no builtin stages"), "{err}");
    }

    #[test]
    fn a_good_pipeline_loads() {
        let p = Pipeline::parse(GOOD, "test", &NoBuiltins).unwrap();
        assert_eq!(p.name, "mock");
        assert_eq!(p.reclaim_timeout, Duration::from_millis(500));
        assert_eq!(p.wait_timeout, Duration::from_secs(600));
        assert_eq!(p.stages[0].memory, MemoryNeed::Declared(12_000_000_000));
        assert_eq!(p.stages[0].retries, 1);
        assert_eq!(p.stages[1].memory, MemoryNeed::Learned { initial: 2 << 30 });
        assert_eq!(p.stages[1].retries, 3);
        assert_eq!(p.produced().collect::<Vec<_>>(), ["1_scripts/{slug}.json"]);
    }

    fn error(text: &str) -> String {
        let err = Pipeline::parse(text, "p.toml", &NoBuiltins).unwrap_err();
        assert!(err.is_bad_input());
        err.to_string()
    }

    #[test]
    fn sizes_in_both_units_are_accepted_and_words_are_not() {
        let with =
            |m: &str| format!("[[stage]]\nname = \"a\"\ncommand = [\"true\"]\nmemory = \"{m}\"\n");
        assert!(Pipeline::parse(&with("12 GB"), "p", &NoBuiltins).is_ok());
        assert!(Pipeline::parse(&with("12GiB"), "p", &NoBuiltins).is_ok());
        let err = error(&with("twelve"));
        assert!(
            err.contains("'twelve'") && err.contains("stage 'a'"),
            "{err}"
        );
    }

    #[test]
    fn threads_are_a_count_or_all() {
        let with =
            |t: &str| format!("[[stage]]\nname = \"a\"\ncommand = [\"true\"]\nthreads = {t}\n");
        let p = Pipeline::parse(&with("3"), "p", &NoBuiltins).unwrap();
        assert_eq!(p.stages[0].threads, Some(Threads::Count(3)));
        assert_eq!(
            p.stages[0].threads.unwrap().on(2),
            2,
            "no more than the machine has"
        );
        let p = Pipeline::parse(&with("\"all\""), "p", &NoBuiltins).unwrap();
        assert_eq!(p.stages[0].threads.unwrap().on(16), 16);
        assert!(error(&with("0")).contains("threads = 0"));
        assert!(error(&with("\"many\"")).contains("threads = \"many\""));
        let none = Pipeline::parse(GOOD, "p", &NoBuiltins).unwrap();
        assert!(none.stages.iter().all(|s| s.threads.is_none()));
    }

    #[test]
    fn cycles_are_named_along_the_loop() {
        let text = "[[stage]]\nname='a'\ncommand=['true']\nafter=['c']\n[[stage]]\nname='b'\ncommand=['true']\nafter=['a']\n[[stage]]\nname='c'\ncommand=['true']\nafter=['b']\n";
        let err = error(text);
        assert!(err.contains("dependency cycle: a → c → b → a"), "{err}");
    }

    #[test]
    fn unknown_stages_keys_and_builtins_are_refused() {
        let err = error("[[stage]]\nname='a'\ncommand=['true']\nafter=['scenez']\n");
        assert!(
            err.contains("'scenez'") && err.contains("stages: a"),
            "{err}"
        );
        let err = error("[[stage]]\nname='a'\nbuiltin='paint'\n");
        assert!(err.contains("unknown builtin 'paint'"), "{err}");
        let err = error("[[stage]]\nname='a'\ncommand=['true']\nmemroy='1GiB'\n");
        assert!(err.contains("memroy") && err.contains("line 4"), "{err}");
        let err =
            error("[[stage]]\nname='a'\ncommand=['true']\n[[stage]]\nname='a'\ncommand=['true']\n");
        assert!(err.contains("two stages are named 'a'"), "{err}");
        assert!(error("name='x'\n").contains("no [[stage]]"));
        assert!(error("[[stage]]\nname='a/b'\ncommand=['true']\n").contains("'a/b'"));
        assert!(
            error("[[stage]]\nname='a'\ncommand=['true']\noutputs=['../x']\n")
                .contains("climbs out")
        );
    }

    #[test]
    fn durations_and_placeholders() {
        assert_eq!(
            Pipeline::parse(
                "reclaim_timeout='2h'\n[[stage]]\nname='a'\ncommand=['true']\ntimeout='500ms'\n",
                "p",
                &NoBuiltins
            )
            .map(|p| (p.reclaim_timeout, p.stages[0].timeout))
            .unwrap(),
            (Duration::from_secs(7200), Some(Duration::from_millis(500)))
        );
        assert!(
            error("wait_timeout='soon'\n[[stage]]\nname='a'\ncommand=['true']\n")
                .contains("wait_timeout = \"soon\"")
        );
        let vars = Placeholders {
            topic: "Cyberpunk Tokyo".into(),
            slug: "cyberpunk_tokyo".into(),
            run_dir: "/out/r".into(),
            pipeline_dir: "/p".into(),
            baton: "/bin/baton".into(),
        };
        assert_eq!(fill("{pipeline_dir}/x.py", &vars), "/p/x.py");
        assert_eq!(
            fill("{run_dir}/1_scripts/{slug}_scenes.json", &vars),
            "/out/r/1_scripts/cyberpunk_tokyo_scenes.json"
        );
        assert_eq!(
            fill("{baton} --topic {topic}", &vars),
            "/bin/baton --topic Cyberpunk Tokyo"
        );
        // One pass: a value that holds a placeholder's name arrives unchanged.
        let tricky = Placeholders {
            topic: "a{run_dir}b {baton}".into(),
            ..vars.clone()
        };
        assert_eq!(
            fill("--topic {topic}", &tricky),
            "--topic a{run_dir}b {baton}"
        );
        assert_eq!(fill("{x} {{topic}} {", &vars), "{x} {Cyberpunk Tokyo} {");
    }
}
