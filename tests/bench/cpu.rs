//! CPU time of the processes in a run, from `/proc`: the engine, PostgreSQL (every
//! `postgres` process), the broker (`nisshi`) and this process (the load generator).

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

fn ticks_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU seconds `pid` has used so far.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    ticks_of(pid).unwrap_or(0) as f64 / TICKS_PER_S
}

fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// CPU used by each group of processes between `start` and `stop`.
pub struct CpuMeter {
    engine: Option<u32>,
    before: Vec<(String, u64)>,
}

impl CpuMeter {
    /// Counts `engine` (a separate engine process) when given; otherwise the engine runs
    /// inside this process and is counted with it.
    pub fn new(engine: Option<u32>) -> Self {
        Self { engine, before: Vec::new() }
    }

    fn sample(&self) -> Vec<(String, u64)> {
        let sum = |pids: Vec<u32>| pids.into_iter().filter_map(ticks_of).sum::<u64>();
        let mut groups = Vec::new();
        if let Some(pid) = self.engine {
            groups.push(("engine".to_owned(), ticks_of(pid).unwrap_or(0)));
            groups.push(("load generator".to_owned(), sum(vec![std::process::id()])));
        } else {
            groups.push(("engine + load".to_owned(), sum(vec![std::process::id()])));
        }
        groups.push(("postgres".to_owned(), sum(pids_named("postgres"))));
        groups.push(("broker".to_owned(), sum(pids_named("nisshi"))));
        groups
    }

    pub fn start(&mut self) {
        self.before = self.sample();
    }

    /// `engine 45 %, postgres 60 %, …` in percent of one core over `elapsed`, and idle.
    pub fn stop(&self, elapsed: Duration) -> String {
        self.stop_per(elapsed, 0)
    }

    /// [`Self::stop`], with each group's CPU ms per unit of work when `units` > 0
    /// (`engine 45 % = 6.1 ms`): the figure that holds steady where rates swing.
    pub fn stop_per(&self, elapsed: Duration, units: usize) -> String {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let mut used = 0.0;
        let mut parts = Vec::new();
        for ((name, after), (_, before)) in self.sample().into_iter().zip(&self.before) {
            let percent = after.saturating_sub(*before) as f64 / TICKS_PER_S / elapsed.as_secs_f64() * 100.0;
            used += percent;
            if units > 0 {
                let ms = after.saturating_sub(*before) as f64 / TICKS_PER_S * 1000.0 / units as f64;
                parts.push(format!("{name} {percent:.0} % = {ms:.2} ms"));
            } else {
                parts.push(format!("{name} {percent:.0} %"));
            }
        }
        parts.push(format!(
            "idle {:.0} % (of {:.0} cores = {:.0} %)",
            (cores * 100.0 - used).max(0.0),
            cores,
            cores * 100.0
        ));
        parts.join(", ")
    }
}
