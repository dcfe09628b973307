//! CPU time and resident memory from `/proc` (Linux): of a process, of this process's threads
//! (the in-process server's told apart from the load generator's) and of every Postgres process.

/// CPU time (user + system) in microseconds of the process `pid`, from `/proc` (Linux; 0 when
/// unreadable).
pub fn cpu_us(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3. USER_HZ is 100 on
    // every Linux this runs on.
    (ticks(11) + ticks(12)) * 10_000.0
}

/// The name of the server runtime's threads.
pub const SERVER_THREAD: &str = "ca-server";

/// CPU time in microseconds of this process's threads: (the server's, everyone else's).
pub fn thread_cpu_us() -> (f64, f64) {
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else {
        return (0.0, 0.0);
    };
    let mut server = 0.0;
    let mut other = 0.0;
    for tid in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
    {
        let us = cpu_us(&format!("self/task/{tid}"));
        let name =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        if name.trim() == SERVER_THREAD {
            server += us;
        } else {
            other += us;
        }
    }
    (server, other)
}

/// CPU time of every process named `postgres` (the server and its backends), in microseconds.
pub fn postgres_cpu_us() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == "postgres")
                .unwrap_or(false)
        })
        .map(|pid| cpu_us(&pid))
        .sum()
}

/// Resident memory in MiB of the process `pid`, from `/proc` (0 when unreadable).
pub fn rss_mb(pid: &str) -> f64 {
    status_mb(pid, "VmRSS:")
}

/// The anonymous part of the resident memory (heap and stacks, not the binary's mapped pages,
/// which come and go with the page cache), in MiB.
pub fn rss_anon_mb(pid: &str) -> f64 {
    status_mb(pid, "RssAnon:")
}

/// A `kB` field of `/proc/{pid}/status` in MiB (0 when unreadable).
fn status_mb(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
