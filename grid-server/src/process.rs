//! Process-wide settings for the binaries built on this crate (`grid-server`, `grid-sim`).
//!
//! **Transparent huge pages.** mimalloc (the binaries' allocator) asks the kernel for huge pages on
//! its arenas (`madvise(MADV_HUGEPAGE)`), and gives memory back when it is no longer used. Under
//! the server's churn (a message, a row, an argument buffer per delivery) that meant zeroing fresh
//! 2 MiB pages again and again: in the 10,000-device benchmark a fifth of the server's CPU was the
//! kernel clearing pages, and the agents' RSS was 800 MB instead of 620 MB. With huge pages off,
//! the same publish took 1.07–1.16 s instead of 1.25–1.34 s (docs/benchmarks.md, "Eleventh
//! session"). [`prefer_small_pages`] turns them off for the process and the processes it starts,
//! unless the operator chose with mimalloc's own `MIMALLOC_ALLOW_THP`.

/// The environment variable that keeps the choice with mimalloc (`1`: huge pages allowed, `0`:
/// off); [`prefer_small_pages`] leaves the process alone when it is set.
pub const ALLOW_THP_VAR: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process and the processes it starts (Linux
/// `PR_SET_THP_DISABLE`, inherited across `fork` and `exec`), unless [`ALLOW_THP_VAR`] is set.
/// Returns whether it turned them off; call it first thing in `main`. On other systems it does
/// nothing.
///
/// ```
/// // A binary's `main` starts with:
/// let _ = grid_server::process::prefer_small_pages();
/// ```
pub fn prefer_small_pages() -> std::io::Result<bool> {
    if std::env::var_os(ALLOW_THP_VAR).is_some() {
        return Ok(false);
    }
    disable_thp()
}

#[cfg(target_os = "linux")]
fn disable_thp() -> std::io::Result<bool> {
    nix::sys::prctl::set_thp_disable(true).map_err(std::io::Error::from)?;
    Ok(true)
}

#[cfg(not(target_os = "linux"))]
fn disable_thp() -> std::io::Result<bool> {
    Ok(false)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_afterwards_unless_the_operator_chose() {
        // The flag is per process and inherited: check it in a child started for this test.
        let exe = std::env::current_exe().expect("test binary");
        if std::env::var_os("GRID_THP_CHILD").is_some() {
            let off = prefer_small_pages().expect("prctl");
            assert_eq!(off, std::env::var_os(ALLOW_THP_VAR).is_none());
            assert_eq!(
                nix::sys::prctl::get_thp_disable().expect("prctl"),
                off,
                "the kernel's flag follows the call"
            );
            return;
        }
        for allow in [None, Some("1")] {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args([
                "--exact",
                "process::tests::huge_pages_are_off_afterwards_unless_the_operator_chose",
                "--nocapture",
            ])
            .env("GRID_THP_CHILD", "1")
            .env_remove(ALLOW_THP_VAR);
            if let Some(v) = allow {
                cmd.env(ALLOW_THP_VAR, v);
            }
            let out = cmd.output().expect("run the child");
            assert!(
                out.status.success(),
                "child ({allow:?}) failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("1 passed"), "the child ran the check: {text}");
        }
    }
}
