//! CPU time and memory of processes, read from `/proc/<pid>/stat` and `/proc/<pid>/status`
//! (Linux only; elsewhere every reading is absent).

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// One process's CPU time so far and its memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// User + system CPU time (s).
    pub cpu_s: f64,
    /// Resident set size now (MB).
    pub rss_mb: f64,
    /// Peak resident set size (MB).
    pub peak_rss_mb: f64,
}

/// Reads one process; `None` when it is gone or /proc is unavailable.
pub fn read(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu_s = cpu_from_stat(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    Some(Usage {
        cpu_s,
        rss_mb: kb_field(&status, "VmRSS:").unwrap_or(0.0) / 1024.0,
        peak_rss_mb: kb_field(&status, "VmHWM:").unwrap_or(0.0) / 1024.0,
    })
}

/// The sum over every process whose command name is `comm` (e.g. all `postgres` backends).
pub fn read_by_name(comm: &str) -> Usage {
    let mut total = Usage::default();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if c.trim() == comm
            && let Some(u) = read(pid)
        {
            total.cpu_s += u.cpu_s;
            total.rss_mb += u.rss_mb;
            total.peak_rss_mb += u.peak_rss_mb;
        }
    }
    total
}

/// utime + stime (fields 14 and 15) of a stat line, in seconds. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its closing parenthesis.
fn cpu_from_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14 → index 11.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

fn kb_field(status: &str, key: &str) -> Option<f64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_the_name() {
        let line = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10";
        assert_eq!(cpu_from_stat(line), Some(3.0));
    }

    #[test]
    fn reads_this_process() {
        let me = read(std::process::id()).expect("/proc is readable on Linux");
        assert!(me.rss_mb > 0.0 && me.peak_rss_mb >= me.rss_mb);
        assert!(kb_field("VmRSS:\t  2048 kB\n", "VmRSS:") == Some(2048.0));
    }
}
