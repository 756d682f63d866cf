//! Criterion benchmarks of the grid crates live in `benches/benches/`; this library is empty and only
//! exists so the benches have a crate to belong to. Run them with `cargo bench -p grid-benches`.
