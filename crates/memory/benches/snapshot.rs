//! `cargo bench -p baton-memory`: what one snapshot costs on each backend this machine has.

fn main() {
    let (costs, skipped) = baton_memory::bench::measure_all(200).expect("snapshot benchmark");
    print!("{}", baton_memory::bench::render_table(&costs));
    for why in skipped {
        println!("skipped {why}");
    }
}
