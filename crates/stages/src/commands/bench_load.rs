//! `baton bench load`: the weights loader against the pinned host-to-device ceiling, candle's
//! loader and PyTorch, on files of a chosen size.

use std::io::Write;

use baton_studio::compute::Compute;

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
pub fn load(args: &baton::args::BenchLoadArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use baton_base::page_cache;
    use baton_weights::{LoadOptions, bench as wb, h2d_bandwidth, load_safetensors};

    if args.repeat == 0 {
        return Err(baton::BadInput("--repeat 0: need at least 1 load of each kind".into()).into());
    }
    let (compute, where_) = Compute::choose(args.compute)?;
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
        .map(|r| *r == baton::args::ReadMode::Mmap)
        .collect();
    let write_combined: Vec<bool> = if device.is_cuda() {
        args.staging
            .iter()
            .map(|s| *s == baton::args::Staging::WriteCombined)
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
