//! `baton bench runner`: what the runner itself costs per stage, and how close a batch over
//! four simulated GPUs comes to the ideal.

use std::io::Write;

/// `baton bench runner`: what the runner itself costs per stage, and how close a batch over
/// four simulated GPUs comes to the ideal time. Runs in a private temporary folder.
pub fn runner(
    stages: usize,
    topics: usize,
    stage_seconds: f64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::Instant;

    use baton_memory::sim::SimBackend;
    use baton_runner::{Engine, LocalExecutor, Pipeline, Quiet, create_run};

    let tmp = std::env::temp_dir().join(format!("baton-bench-runner-{}", std::process::id()));
    let sim_dir = tmp.join("sim");
    let result = (|| -> anyhow::Result<()> {
        let sim = Arc::new(SimBackend::open(&sim_dir, Some("4x24GiB"))?);
        // Stages started by the engine find the same simulation through the environment.
        // SAFETY: set before any thread of this process reads the environment concurrently.
        unsafe {
            std::env::set_var("BATON_SIM_DIR", &sim_dir);
            std::env::set_var("BATON_SIM_GPUS", "4x24GiB");
        }
        let engine = Engine {
            gpu: sim.clone(),
            host: Arc::new(baton_memory::host::HostBackend::new()),
            executor: Arc::new(LocalExecutor::kept(std::env::current_exe()?)),
            observer: Arc::new(Quiet),
            learned: None,
            catalog: Arc::new(baton_runner::NoBuiltins),
            reserve: baton_runner::Reserve::default(),
            cluster: None,
        };

        // 1. Chained no-op stages: everything between one stage's start and the next's is
        //    the runner's cost (spawn, watch, reclaim, manifest writes, scheduling).
        let mut toml = String::new();
        for i in 0..stages.max(2) {
            toml.push_str(&format!(
                "[[stage]]\nname = \"s{i}\"\ncommand = [\"true\"]\nmemory = \"0\"\n"
            ));
            if i > 0 {
                toml.push_str(&format!("after = [\"s{}\"]\n", i - 1));
            }
        }
        let pipeline = Pipeline::parse(&toml, "(bench)", &baton_runner::NoBuiltins)?;
        let mut plans = vec![create_run(&tmp.join("out"), "overhead", &pipeline, "sim")?];
        let started = Instant::now();
        engine.execute(&mut plans)?;
        let total = started.elapsed();
        let m = &plans[0].manifest;
        let starts: Vec<u64> = m
            .stages
            .iter()
            .map(|s| s.attempts[0].started_unix_ms)
            .collect();
        let mut gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        gaps.sort();
        let mut reclaims: Vec<f64> = m
            .stages
            .iter()
            .filter_map(|s| s.attempts[0].reclaim.as_ref().map(|r| r.ms))
            .collect();
        reclaims.sort_by(f64::total_cmp);
        writeln!(
            out,
            "runner cost per no-op stage ({} chained stages on sim, `true` as the stage):",
            m.stages.len()
        )?;
        writeln!(
            out,
            "  start-to-start median {} ms (min {}, max {}); {:.1} ms per stage overall; reclaim median {:.1} ms",
            gaps[gaps.len() / 2],
            gaps[0],
            gaps[gaps.len() - 1],
            total.as_secs_f64() * 1000.0 / m.stages.len() as f64,
            reclaims[reclaims.len() / 2]
        )?;
        writeln!(out, "  target: under 50 ms median")?;

        // 2. A batch: each topic's stage needs most of a GPU, so at most one runs per GPU.
        let toml = format!(
            "[[stage]]\nname = \"work\"\ncommand = [\"{{baton}}\", \"sim\", \"work\", \"16GiB\", \"--seconds\", \"{stage_seconds}\"]\nmemory = \"16GiB\"\n"
        );
        let pipeline = Pipeline::parse(&toml, "(bench)", &baton_runner::NoBuiltins)?;
        let mut plans = (0..topics)
            .map(|i| create_run(&tmp.join("batch"), &format!("topic {i}"), &pipeline, "sim"))
            .collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        engine.execute(&mut plans)?;
        let wall = started.elapsed().as_secs_f64();
        let ideal = topics.div_ceil(4) as f64 * stage_seconds;
        let failed = plans
            .iter()
            .filter(|p| p.manifest.state != baton_runner::RunState::Succeeded)
            .count();
        writeln!(
            out,
            "batch of {topics} topics over 4 simulated GPUs, one {stage_seconds}s stage each (16 GiB, one per GPU at a time):"
        )?;
        writeln!(
            out,
            "  wall {wall:.2}s, ideal {ideal:.2}s: {:.1}% over the ideal; {failed} failed",
            (wall / ideal - 1.0) * 100.0
        )?;
        // Where the time over the ideal goes: inside the stage processes (start-up, the
        // simulation's file lock) or between them (reclaim, bookkeeping, placement).
        let attempts: Vec<_> = plans
            .iter()
            .flat_map(|p| p.manifest.stages.iter().flat_map(|s| s.attempts.iter()))
            .collect();
        let lifetime =
            attempts.iter().filter_map(|a| a.wall_ms()).sum::<u64>() as f64 / attempts.len() as f64;
        let mut by_device: std::collections::BTreeMap<&str, Vec<(u64, u64)>> = Default::default();
        for a in &attempts {
            by_device.entry(a.device.as_str()).or_default().push((
                a.started_unix_ms,
                a.ended_unix_ms.unwrap_or(a.started_unix_ms),
            ));
        }
        let mut gaps = Vec::new();
        for spans in by_device.values_mut() {
            spans.sort();
            gaps.extend(spans.windows(2).map(|w| w[1].0.saturating_sub(w[0].1)));
        }
        let gap = gaps.iter().sum::<u64>() as f64 / gaps.len().max(1) as f64;
        writeln!(
            out,
            "  per stage: process lifetime {lifetime:.1} ms for {:.0} ms of work; gap between stages on a GPU {gap:.1} ms",
            stage_seconds * 1000.0
        )?;
        writeln!(out, "  target: within 10% of the ideal")?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
