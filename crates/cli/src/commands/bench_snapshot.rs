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
