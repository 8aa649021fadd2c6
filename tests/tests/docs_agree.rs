//! ARCHITECTURE.md copies the metric table and the anomaly rules from the
//! crates' own references (`METRICS.md`, `ANOMALY.md`, which their tests
//! hold to the code); these tests keep the copies equal to them.
#![cfg(test)]

fn rows<'a>(text: &'a str, first_cell: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| line.starts_with(first_cell))
        .collect()
}

#[test]
fn the_architecture_lists_every_metric_as_the_metrics_crate_does() {
    let architecture = include_str!("../../ARCHITECTURE.md");
    let metrics = include_str!("../../crates/paddock-metrics/METRICS.md");
    let reference = rows(metrics, "| `paddock_");
    assert!(reference.len() > 30, "{} metrics", reference.len());
    assert_eq!(rows(architecture, "| `paddock_"), reference);
}

#[test]
fn the_architecture_lists_every_anomaly_rule_as_the_detector_does() {
    let architecture = include_str!("../../ARCHITECTURE.md");
    let anomaly = include_str!("../../crates/paddock-anomaly/ANOMALY.md");
    let table = |text: &str| -> Vec<String> {
        let start = text.find("| rule | fires when").expect("the rules table");
        text[start..]
            .lines()
            .take_while(|line| line.starts_with('|'))
            .map(str::to_owned)
            .collect()
    };
    let reference = table(anomaly);
    assert_eq!(reference.len(), 12, "a header, a rule line and 10 rules");
    assert_eq!(table(architecture), reference);
}
