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
