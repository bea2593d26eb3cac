//! Printing results: a markdown table for people, a JSON line for machines.

use hdrhistogram::Histogram;
use serde_json::Value;

pub fn table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("\n### {title}\n");
    println!("| {} |", header.join(" | "));
    println!(
        "|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

pub fn json(scenario: &str, value: Value) {
    println!(
        "\nJSON {}",
        serde_json::json!({"scenario": scenario, "results": value})
    );
}

/// Microsecond histogram → "p50 / p99 / max" in ms.
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// The whole machine's CPU time so far (`/proc/stat`), to tell what a scenario ran on.
/// On a virtual machine the host may hand the CPUs to other guests ("steal"); the
/// latency tails of a run with more than a few percent of steal say more about the host
/// than about Reddot, and runs are only comparable at similar steal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl CpuTimes {
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The first line: `cpu user nice system idle iowait irq softirq steal …` in ticks.
    fn parse(stat: &str) -> Option<Self> {
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
            return None;
        };
        Some(Self {
            busy: user + nice + system + irq + softirq,
            idle: idle + iowait,
            steal,
        })
    }

    /// Percent of the CPU time since `self` that was busy, and that the host took.
    pub fn since(self, later: Self) -> (f64, f64) {
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let idle = later.idle.saturating_sub(self.idle) as f64;
        let steal = later.steal.saturating_sub(self.steal) as f64;
        let total = (busy + idle + steal).max(1.0);
        (100.0 * busy / total, 100.0 * steal / total)
    }
}

/// Prints what the machine did during `scenario`, which began at `before`.
pub fn machine(scenario: &str, before: Option<CpuTimes>) {
    let (Some(before), Some(after)) = (before, CpuTimes::now()) else {
        return;
    };
    let (busy, steal) = before.since(after);
    println!(
        "\nmachine during {scenario}: CPUs {busy:.0} % busy, {steal:.1} % taken by the host (steal)"
    );
    println!(
        "\nJSON {}",
        serde_json::json!({"scenario": scenario, "machine": {"busy_pct": busy, "steal_pct": steal}})
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_come_from_the_first_line_of_proc_stat() {
        let before = CpuTimes::parse("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n");
        let after = CpuTimes::parse("cpu  200 0 50 850 10 0 0 90 0 0\ncpu0 1 2 3\n");
        let (Some(before), Some(after)) = (before, after) else {
            panic!("a /proc/stat line did not parse");
        };
        // 100 busy, 50 idle, 50 stolen ticks in between.
        assert_eq!(before.since(after), (50.0, 25.0));
        assert_eq!(CpuTimes::parse("intr 1 2 3"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3"), None);
    }
}
