//! `baton bench snapshot`: the cost of one reading per backend, as a table, for the GPU
//! machine where there is no cargo to run `cargo bench`.

use std::io::Write;

pub fn snapshot(iterations: usize, out: &mut dyn Write) -> anyhow::Result<()> {
    let (costs, skipped) = baton_memory::bench::measure_all(iterations)?;
    out.write_all(baton_memory::bench::render_table(&costs).as_bytes())?;
    for why in skipped {
        writeln!(out, "skipped {why}")?;
    }
    Ok(())
}

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
            executor: Arc::new(LocalExecutor),
            observer: Arc::new(Quiet),
            learned: None,
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
        let pipeline = Pipeline::parse(&toml, "(bench)")?;
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
        let pipeline = Pipeline::parse(&toml, "(bench)")?;
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

/// `baton demo switch`: the tables of the chosen mode(s) and a verdict.
pub fn demo_switch(args: &crate::args::SwitchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use crate::switch::{Mode, in_process, processes, render};
    let (target, why) = crate::switch::choose_target(args.device)?;
    writeln!(
        out,
        "baton demo switch: two mock models of {} {why}",
        baton_base::format_bytes(args.size)
    )?;
    out.flush()?;
    let mut results = Vec::new();
    // Processes first: the in-process mode gives this process a CUDA context for good, and the
    // parent of the processes mode must hold none.
    if matches!(args.mode, Mode::Processes | Mode::Both) {
        results.push(processes(target, args.size, args.tolerance)?);
    }
    if matches!(args.mode, Mode::InProcess | Mode::Both) {
        results.push(in_process(
            target,
            args.size,
            args.tolerance,
            args.inject_leak,
        )?);
    }
    for r in &results {
        writeln!(out)?;
        out.write_all(render(r).as_bytes())?;
    }
    if let [p, i] = results.as_slice() {
        writeln!(
            out,
            "\nside by side: switch {:.1} ms in-process vs {:.1} ms with processes; left after release {} vs {}",
            i.switch_seconds * 1000.0,
            p.switch_seconds * 1000.0,
            baton_base::format_bytes(i.left_after_release),
            baton_base::format_bytes(p.left_after_release)
        )?;
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.verified)
        .map(|r| r.mode)
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "memory did not come back in mode {}: see the verdict above",
            failed.join(" and ")
        );
    }
    Ok(())
}

/// `baton bench switch`: each mode `repeat` times; median and spread of the switch latency,
/// the memory left after release, and the peak.
pub fn switch(
    repeat: usize,
    size: u64,
    device: baton_memory::DeviceChoice,
    json: Option<&std::path::Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::switch::{ModeResult, in_process, processes};
    let (target, why) = crate::switch::choose_target(device)?;
    let repeat = repeat.max(1);
    let mut modes: Vec<(&str, Vec<ModeResult>)> =
        vec![("processes", Vec::new()), ("in-process", Vec::new())];
    for _ in 0..repeat {
        modes[0].1.push(processes(target, size, 64 << 20)?);
    }
    for _ in 0..repeat {
        modes[1].1.push(in_process(target, size, 64 << 20, false)?);
    }
    let column = |runs: &[ModeResult], f: fn(&ModeResult) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    if let Some(path) = json {
        let body: serde_json::Map<String, serde_json::Value> = modes
            .iter()
            .map(|(name, runs)| {
                (
                    name.to_string(),
                    serde_json::json!({
                        "switch_seconds": column(runs, |r| r.switch_seconds),
                        "left_after_release": column(runs, |r| r.left_after_release as f64),
                        "peak": column(runs, |r| r.peak as f64),
                        "baseline": column(runs, |r| r.baseline as f64),
                        "context": column(runs, |r| r.context.unwrap_or(0) as f64),
                        "verified": runs.iter().all(|r| r.verified),
                    }),
                )
            })
            .collect();
        let doc = serde_json::json!({"tool": "baton", "target": target, "size": size, "repeat": repeat, "modes": body});
        baton_base::atomic_file::write_atomic(
            path,
            serde_json::to_string_pretty(&doc)?.as_bytes(),
        )?;
    }
    writeln!(
        out,
        "baton bench switch: {} mock models {why}, {repeat} run(s) per mode",
        baton_base::format_bytes(size)
    )?;
    writeln!(
        out,
        "{:<11} {:>24} {:>30} {:>22}",
        "MODE", "SWITCH ms median (range)", "LEFT AFTER RELEASE median", "PEAK median"
    )?;
    for (name, runs) in &modes {
        let switch = column(runs, |r| r.switch_seconds * 1000.0);
        let left = column(runs, |r| r.left_after_release as f64);
        let peak = column(runs, |r| r.peak as f64);
        let mid = |v: &[f64]| v[v.len() / 2];
        writeln!(
            out,
            "{:<11} {:>24} {:>30} {:>22}",
            name,
            format!(
                "{:.1} ({:.1}–{:.1})",
                mid(&switch),
                switch[0],
                switch[switch.len() - 1]
            ),
            baton_base::format_bytes(mid(&left) as u64),
            baton_base::format_bytes(mid(&peak) as u64)
        )?;
    }
    Ok(())
}

/// `baton bench llm`: tokens per second of a GGUF model, free text by the loop of candle's own
/// quantized example (same sampler, seed and repeat penalty, so the two can be run side by
/// side on one file: `bench/candle_quantized.sh`), then the constrained storyboard JSON that
/// `baton scenes` writes. The median of `repeat` runs of each.
pub fn llm(args: &crate::args::BenchLlmArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use baton_studio::llm::{Generation, Llm, Sampler};
    use baton_studio::model_store::ModelStore;
    use baton_studio::scenes::storyboard_request;

    if args.repeat == 0 || args.tokens < 2 {
        return Err(crate::BadInput(format!(
            "--repeat {} --tokens {}: need at least 1 run of at least 2 tokens",
            args.repeat, args.tokens
        ))
        .into());
    }
    let path = ModelStore::from_env().resolve(&args.model, true)?;
    let (compute, where_) = crate::scenes_cmd::compute(args.compute)?;
    let (_, device) = compute.open()?;
    baton_studio::llm::warm_up(&device)?;
    let started = std::time::Instant::now();
    let mut llm = Llm::load(&path, &device, args.tokenizer.as_deref())?;
    writeln!(
        out,
        "model {} ({}, {:.1} MB) loaded in {:.2}s, {where_}; {} CPU threads",
        path.display(),
        llm.arch,
        llm.file_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )?;
    // The same file through candle's own model (its tensors read by candle, one pageable copy
    // each): how long that load takes, and whether baton's model computes the same logits.
    let probe: Vec<u32> = [1u32, 2, 3, 5, 8]
        .iter()
        .map(|t| t % llm.n_vocab as u32)
        .collect();
    let ours = llm.logits(&probe)?;
    let (theirs, candle_seconds) = baton_studio::llm::candle_reference(&path, &device, &probe)?;
    let max_diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    writeln!(
        out,
        "weights through baton's lanes: {:.3}s ({:.2} GB/s); candle's quantized_{} from_gguf: {:.3}s; logits after {} tokens, baton vs candle: {}",
        llm.load.seconds,
        llm.load.gb_per_second(),
        llm.arch,
        candle_seconds,
        probe.len(),
        if ours == theirs {
            "identical".to_string()
        } else {
            format!("max |difference| {max_diff:.3e} over {} logits", ours.len())
        }
    )?;
    if let Some(file) = &args.save_tokenizer {
        let json = llm
            .tokenizer
            .to_string(true)
            .map_err(|e| anyhow::anyhow!("cannot serialize the tokenizer: {e}"))?;
        baton_base::atomic_file::write_atomic(file, json.as_bytes())?;
        writeln!(out, "tokenizer written to {}", file.display())?;
    }

    let median = |mut runs: Vec<Generation>| -> Generation {
        runs.sort_by(|a, b| a.tokens_per_second().total_cmp(&b.tokens_per_second()));
        runs.swap_remove(runs.len() / 2)
    };
    let free = Sampler {
        temperature: args.temperature,
        top_p: 1.0,
        seed: args.seed,
        max_tokens: args.tokens,
        repeat_penalty: args.repeat_penalty,
    };
    let mut runs = Vec::new();
    for _ in 0..args.repeat {
        runs.push(llm.generate_text(&args.prompt, &free, 64)?);
    }
    if args.print_text {
        writeln!(out, "free text of run 1:\n{}\n", runs[0].text)?;
    }
    let text_median = median(runs);
    let mut rows = vec![("free text (candle example's loop)", text_median)];
    if args.scenes > 0 {
        let (prompt, schema) = storyboard_request(&llm, "Cyberpunk Tokyo", args.scenes)?;
        let constrained = Sampler {
            temperature: 0.7,
            top_p: 0.9,
            seed: 42,
            max_tokens: 3000,
            repeat_penalty: 1.0,
        };
        let mut runs = Vec::new();
        for _ in 0..args.repeat {
            runs.push(llm.generate_json(&prompt, schema.clone(), &constrained, &mut |_| {})?);
        }
        rows.push(("storyboard JSON (baton scenes)", median(runs)));
    }
    writeln!(
        out,
        "{:<36} {:>8} {:>10} {:>12} {:>12}",
        "GENERATION", "PROMPT", "GENERATED", "PROMPT tok/s", "tokens/s"
    )?;
    for (name, g) in &rows {
        writeln!(
            out,
            "{:<36} {:>8} {:>10} {:>12.1} {:>12.2}",
            name,
            g.prompt_tokens,
            g.tokens,
            g.prompt_tokens as f64 / g.prompt_time.as_secs_f64().max(1e-9),
            g.tokens_per_second()
        )?;
    }
    writeln!(out, "(median of {} runs each)", args.repeat)?;
    Ok(())
}

/// One line of `baton bench load`'s table.
#[derive(Debug, serde::Serialize)]
struct LoadRow {
    file_bytes: u64,
    method: String,
    runs: Vec<f64>,
    gb_per_second: f64,
    note: String,
}

/// `baton bench load`: the pinned host-to-device ceiling, then each file loaded by baton (page
/// cache warm, every lanes x chunk setting; then cold), by candle's default loader and by
/// PyTorch, in one process on one device, so the ratios in the table are like for like.
pub fn load(args: &crate::args::BenchLoadArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use baton_base::page_cache;
    use baton_weights::{LoadOptions, bench as wb, h2d_bandwidth, load_safetensors};

    if args.repeat == 0 {
        return Err(crate::BadInput("--repeat 0: need at least 1 load of each kind".into()).into());
    }
    let (compute, where_) = crate::scenes_cmd::compute(args.compute)?;
    let (backend, device) = compute.open()?;
    let defaults = LoadOptions {
        slots: args.slots,
        ..LoadOptions::default()
    };
    let lanes = if args.lanes.is_empty() {
        vec![defaults.lanes]
    } else {
        args.lanes.clone()
    };
    let chunks = if args.chunk.is_empty() {
        vec![defaults.chunk_bytes]
    } else {
        args.chunk.iter().map(|&c| c as usize).collect()
    };
    writeln!(out, "loading {where_} ({})", backend.description())?;
    let mut rows: Vec<LoadRow> = Vec::new();
    let best = |runs: &[f64]| runs.iter().copied().fold(f64::INFINITY, f64::min);

    let probe = 1usize << 30;
    let pinned = h2d_bandwidth(&device, probe, true, 4)?;
    let pageable = h2d_bandwidth(&device, probe, false, 2)?;
    for (name, rate) in [
        ("pinned H2D copy (1 GiB)", pinned),
        ("pageable H2D copy (1 GiB)", pageable),
    ] {
        if let Some(rate) = rate {
            writeln!(out, "{name}: {:.1} GB/s", rate / 1e9)?;
            rows.push(LoadRow {
                file_bytes: probe as u64,
                method: name.into(),
                runs: vec![probe as f64 / rate],
                gb_per_second: rate / 1e9,
                note: String::new(),
            });
        }
    }
    // What a resident host cache would give: ordinary memory pinned in place in one call (4 KiB
    // pages, then huge pages where the kernel gives them), and the copy from it.
    for (huge, pages) in [(false, "4 KiB pages"), (true, "huge pages")] {
        if let Some(reg) = baton_weights::registered_h2d(&device, probe, huge, 4)? {
            writeln!(
                out,
                "1 GiB of host memory ({pages}) registered in place in {:.4}s ({:.1} GB/s), then H2D {:.1} GB/s",
                reg.register_seconds,
                probe as f64 / reg.register_seconds / 1e9,
                reg.copy_rate / 1e9
            )?;
        }
    }
    std::fs::create_dir_all(&args.dir)?;
    check_loader(&args.dir, &backend, &device, out)?;
    let direct = if device.is_cuda() {
        args.direct_lanes.clone()
    } else {
        vec![0]
    };
    let mapped: Vec<bool> = args
        .read
        .iter()
        .map(|r| *r == crate::args::ReadMode::Mmap)
        .collect();
    let write_combined: Vec<bool> = if device.is_cuda() {
        args.staging
            .iter()
            .map(|s| *s == crate::args::Staging::WriteCombined)
            .collect()
    } else {
        vec![false]
    };
    let sweep = Sweep {
        lanes: &lanes,
        chunks: &chunks,
        direct: &direct,
        mapped: &mapped,
        write_combined: &write_combined,
        defaults,
        repeat: args.repeat,
    };
    for &size in &args.sizes {
        let (path, bytes) = bench_file(
            &args.dir,
            size,
            "safetensors",
            "bf16 tensors",
            &wb::write_llama_like,
            out,
        )?;
        let mut table = Table {
            rows: &mut rows,
            out,
            bytes,
        };
        // The ceiling the host sets before any GPU work: reading the cached file into ordinary
        // memory, on 1 to 16 threads.
        for threads in [1, 4, 8, 16] {
            let read = page_cache::warm(&path, threads)?;
            table.push(
                format!("page cache read only, {threads} threads (no GPU)"),
                vec![read.seconds],
                String::new(),
            )?;
        }
        let load = |options: &LoadOptions| -> anyhow::Result<baton_weights::LoadReport> {
            let loaded = load_safetensors(&path, &device, options)?;
            let report = loaded.report.clone();
            drop(loaded);
            backend.trim()?;
            Ok(report)
        };
        sweep.run("baton", &load, &mut table)?;
        let options = sweep.first();
        if device.is_cuda() {
            let convert = LoadOptions {
                dtype: Some(candle_core::DType::F16),
                ..options
            };
            // The cast kernel's module loads on first use: not the load's cost.
            candle_core::Tensor::zeros(16, candle_core::DType::BF16, &device)?
                .to_dtype(candle_core::DType::F16)?;
            device.synchronize()?;
            let seconds = load(&convert)?.seconds;
            table.push(
                "baton, warm, bf16 -> f16 on the GPU".into(),
                vec![seconds],
                String::new(),
            )?;
        }
        table.cold("baton, cold", &path, &|| load(&options))?;
        let mut runs = Vec::new();
        for _ in 0..args.repeat.min(2) {
            runs.push(wb::candle_default_load(&path, &device)?);
            backend.trim()?;
        }
        table.push("candle safetensors::load, warm".into(), runs, String::new())?;
        if device.is_cuda() {
            match wb::torch_load(&args.python, &path) {
                Ok(seconds) => table.push(
                    "PyTorch load_file(device=cuda), warm".into(),
                    vec![seconds],
                    String::new(),
                )?,
                Err(why) => writeln!(table.out, "  PyTorch: not measured: {why}")?,
            }
        }
        if !args.keep {
            std::fs::remove_file(&path)?;
        }
    }
    for size in args.gguf_sizes.iter().flatten().copied() {
        let (path, bytes) = bench_file(
            &args.dir,
            size,
            "gguf",
            "Q4_K/Q6_K blocks",
            &wb::write_gguf_llama_like,
            out,
        )?;
        let mut table = Table {
            rows: &mut rows,
            out,
            bytes,
        };
        let load = |options: &LoadOptions| -> anyhow::Result<baton_weights::LoadReport> {
            let loaded = baton_weights::load_gguf(&path, &device, options)?;
            let report = loaded.report.clone();
            drop(loaded);
            backend.trim()?;
            Ok(report)
        };
        sweep.run("GGUF baton", &load, &mut table)?;
        table.cold("GGUF baton, cold", &path, &|| load(&sweep.first()))?;
        let mut runs = Vec::new();
        for _ in 0..args.repeat.min(2) {
            let (tensors, seconds) = wb::candle_gguf_load(&path, &device)?;
            drop(tensors);
            backend.trim()?;
            runs.push(seconds);
        }
        table.push(
            "GGUF candle Content::tensor, warm".into(),
            runs,
            String::new(),
        )?;
        if !args.keep {
            std::fs::remove_file(&path)?;
        }
    }

    writeln!(
        out,
        "\n{:<46} {:>9} {:>9} {:>8} {:>10} {:>9}",
        "METHOD", "FILE GB", "BEST s", "GB/s", "% PINNED", "x TORCH"
    )?;
    for row in &rows {
        let torch = rows
            .iter()
            .find(|r| r.file_bytes == row.file_bytes && r.method.starts_with("PyTorch"));
        writeln!(
            out,
            "{:<46} {:>9.2} {:>9.3} {:>8.1} {:>10} {:>9}",
            row.method,
            row.file_bytes as f64 / 1e9,
            best(&row.runs),
            row.gb_per_second,
            pinned.map_or("-".into(), |p| format!(
                "{:.0}%",
                row.gb_per_second * 1e9 / p * 100.0
            )),
            torch.map_or("-".into(), |t| format!(
                "{:.1}x",
                best(&t.runs) / best(&row.runs)
            )),
        )?;
    }
    if let Some(file) = &args.json {
        baton_base::atomic_file::write_atomic(file, &serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}

/// Writes one of `baton bench load`'s files (`bench-SIZE.EXT` in `dir`) with `write`, says what
/// was written and how long it took, and pulls it into the page cache. Returns its path and its
/// tensor bytes.
#[allow(clippy::type_complexity)]
fn bench_file(
    dir: &std::path::Path,
    size: u64,
    ext: &str,
    what: &str,
    write: &dyn Fn(&std::path::Path, u64) -> Result<u64, baton_weights::WeightsError>,
    out: &mut dyn Write,
) -> anyhow::Result<(std::path::PathBuf, u64)> {
    let path = dir.join(format!(
        "bench-{}.{ext}",
        baton_base::format_bytes(size).replace(' ', "")
    ));
    let started = std::time::Instant::now();
    let bytes = write(&path, size)?;
    writeln!(
        out,
        "\n{}: {:.2} GB of {what} written in {:.1}s",
        path.display(),
        bytes as f64 / 1e9,
        started.elapsed().as_secs_f64()
    )?;
    let warm = baton_base::page_cache::warm(&path, 8)?;
    writeln!(out, "page cache: {warm}")?;
    Ok((path, bytes))
}

/// ` (N pinning pages in place)` where a load has direct lanes.
fn direct_note(options: &baton_weights::LoadOptions) -> String {
    match options.direct_lanes.min(options.lanes) {
        0 => String::new(),
        n if n == options.lanes => " (all pinning pages in place)".into(),
        n => format!(" ({n} pinning pages in place)"),
    }
}

/// The rows of `baton bench load`'s table for one file, printed as they come.
struct Table<'a> {
    rows: &'a mut Vec<LoadRow>,
    out: &'a mut dyn Write,
    bytes: u64,
}

impl Table<'_> {
    /// One load of `path` with the file dropped from the page cache first (read from the disk),
    /// then the file warmed again for what follows.
    fn cold(
        &mut self,
        method: &str,
        path: &std::path::Path,
        load: &dyn Fn() -> anyhow::Result<baton_weights::LoadReport>,
    ) -> anyhow::Result<()> {
        let still = baton_base::page_cache::evict(path)?;
        let seconds = load()?.seconds;
        self.push(
            method.into(),
            vec![seconds],
            format!("{:.0}% cached after eviction", still * 100.0),
        )?;
        baton_base::page_cache::warm(path, 8)?;
        Ok(())
    }

    fn push(&mut self, method: String, runs: Vec<f64>, note: String) -> anyhow::Result<()> {
        let gbps = |seconds: f64| self.bytes as f64 / seconds / 1e9;
        let b = runs.iter().copied().fold(f64::INFINITY, f64::min);
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        writeln!(
            self.out,
            "  {method}: best {:.3}s ({:.1} GB/s), median {:.3}s{}",
            b,
            gbps(b),
            sorted[sorted.len() / 2],
            if note.is_empty() {
                String::new()
            } else {
                format!(" [{note}]")
            }
        )?;
        self.rows.push(LoadRow {
            file_bytes: self.bytes,
            method,
            gb_per_second: gbps(b),
            runs,
            note,
        });
        Ok(())
    }
}

/// Every lanes x chunk x direct-lanes setting of `baton bench load`, each loaded `repeat` times
/// with the page cache warm.
struct Sweep<'a> {
    lanes: &'a [usize],
    chunks: &'a [usize],
    /// How many lanes pin pages in place (0: all staged); on a GPU only.
    direct: &'a [usize],
    /// How chunks are read: `pread` (false) or copied out of a mapping (true).
    mapped: &'a [bool],
    /// Staging buffers write-combined (true) or cached (false).
    write_combined: &'a [bool],
    defaults: baton_weights::LoadOptions,
    repeat: usize,
}

impl Sweep<'_> {
    /// The setting reported as baton's: the first of each list given.
    fn first(&self) -> baton_weights::LoadOptions {
        baton_weights::LoadOptions {
            lanes: self.lanes[0],
            chunk_bytes: self.chunks[0],
            direct_lanes: self.direct[0],
            mapped: self.mapped[0],
            write_combined: self.write_combined[0],
            ..self.defaults
        }
    }

    fn run(
        &self,
        label: &str,
        load: &dyn Fn(&baton_weights::LoadOptions) -> anyhow::Result<baton_weights::LoadReport>,
        table: &mut Table,
    ) -> anyhow::Result<()> {
        for &l in self.lanes {
            for &c in self.chunks {
                for (&direct, &mapped, &write_combined) in self.direct.iter().flat_map(|d| {
                    self.mapped
                        .iter()
                        .flat_map(move |m| self.write_combined.iter().map(move |w| (d, m, w)))
                }) {
                    let options = baton_weights::LoadOptions {
                        lanes: l,
                        chunk_bytes: c,
                        direct_lanes: direct.min(l),
                        mapped,
                        write_combined,
                        ..self.defaults
                    };
                    let mut runs = Vec::new();
                    let mut last = None;
                    for _ in 0..self.repeat {
                        let report = load(&options)?;
                        runs.push(report.seconds);
                        last = Some(report);
                    }
                    let last = last.expect("at least one run");
                    table.push(
                        format!(
                            "{label}{}{}, warm, {l} lanes{} x {} x {}",
                            if mapped { " mmap" } else { "" },
                            if write_combined { " wc" } else { "" },
                            direct_note(&options),
                            baton_base::format_bytes(c as u64),
                            options.slots
                        ),
                        runs,
                        format!(
                            "{:.0}% cached; last run: alloc {:.3}s, staging {:.3}s",
                            last.cached_before.unwrap_or(0.0) * 100.0,
                            last.alloc_seconds,
                            last.staging_seconds
                        ),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Before timing anything: the loader is bit-exact with candle's on this device (every dtype,
/// two chunkings), and broken files are refused with device memory verified back where it was.
fn check_loader(
    dir: &std::path::Path,
    backend: &std::sync::Arc<dyn baton_memory::MemoryBackend>,
    device: &candle_core::Device,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use baton_weights::{LoadOptions, bench as wb, load_safetensors};

    let mixed = dir.join("mixed.safetensors");
    wb::write_mixed(&mixed, 11)?;
    let odd = LoadOptions {
        lanes: 3,
        chunk_bytes: 4099,
        slots: 2,
        ..LoadOptions::default()
    };
    let mapped = LoadOptions {
        mapped: true,
        ..odd
    };
    let mut settings = vec![LoadOptions::default(), odd, mapped];
    if device.is_cuda() {
        settings.push(LoadOptions {
            write_combined: true,
            ..odd
        });
        // Every lane pinning pages in place, and lanes of both kinds in one load.
        for direct_lanes in [usize::MAX, 1] {
            settings.extend([
                LoadOptions {
                    direct_lanes,
                    ..LoadOptions::default()
                },
                LoadOptions {
                    direct_lanes,
                    ..odd
                },
            ]);
        }
    }
    for options in settings {
        let n = wb::verify_against_candle(&mixed, device, &options)?;
        writeln!(
            out,
            "bit-exact with candle's loader on this device: {n} tensors (9 dtypes), {} lanes{} x {} byte chunks{}",
            options.lanes,
            direct_note(&options),
            options.effective_chunk_bytes(),
            if options.mapped {
                ", read from a mapping"
            } else {
                ""
            },
        )?;
        backend.trim()?;
    }
    let quantized = dir.join("every-type.gguf");
    let types = wb::write_every_gguf_type(&quantized)?.len();
    for options in [LoadOptions::default(), odd] {
        let n = wb::verify_gguf_against_candle(&quantized, device, &options)?;
        writeln!(
            out,
            "GGUF bit-exact with candle's reader on this device: {n} tensors ({types} block types), {} lanes x {} byte chunks",
            options.lanes, options.chunk_bytes
        )?;
        backend.trim()?;
    }
    let gguf_bytes = std::fs::read(&quantized)?;
    let cut_gguf = dir.join("truncated.gguf");
    std::fs::write(&cut_gguf, &gguf_bytes[..gguf_bytes.len() - 100])?;
    std::fs::remove_file(&quantized)?;
    let bytes = std::fs::read(&mixed)?;
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000])?;
    let lying = dir.join("lying.safetensors");
    wb::write_raw(
        &lying,
        r#"{"w":{"dtype":"F32","shape":[1024,1024],"data_offsets":[0,4096]}}"#,
        &[0; 4096],
    )?;
    let f8 = dir.join("f8.safetensors");
    wb::write_raw(
        &f8,
        r#"{"w":{"dtype":"F8_E5M2","shape":[16],"data_offsets":[0,16]}}"#,
        &[0; 16],
    )?;
    for path in [&truncated, &lying, &f8, &cut_gguf] {
        let scope = baton_memory::MemoryScope::new(backend.clone(), 0, "bad file")?;
        let outcome = if path == &cut_gguf {
            baton_weights::load_gguf(path, device, &LoadOptions::default()).map(|_| ())
        } else {
            load_safetensors(path, device, &LoadOptions::default()).map(|_| ())
        };
        backend.trim()?;
        let report = scope.finish()?;
        match outcome {
            Ok(_) => anyhow::bail!("{} loaded, but it is broken", path.display()),
            Err(e) => writeln!(out, "refused: {e}\n  memory: {report}")?,
        }
        std::fs::remove_file(path)?;
    }
    std::fs::remove_file(&mixed)?;
    Ok(())
}
