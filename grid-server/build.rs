//! Tells cargo what the sqlx macros read besides the sources, so a change to any of it rebuilds
//! the crate: the migrations (`sqlx::migrate!`), the offline query data and the macros' config and
//! environment (`sqlx::query!`, see `src/store/postgres.rs`).

fn main() {
    for path in ["migrations", ".sqlx", "sqlx.toml"] {
        println!("cargo::rerun-if-changed={path}");
    }
    for var in ["GRID_SQLX_PREPARE_URL", "SQLX_OFFLINE", "SQLX_OFFLINE_DIR"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
}
