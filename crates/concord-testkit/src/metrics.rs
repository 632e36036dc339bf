//! `/metrics` pages parsed by `openmetrics-parser`'s Prometheus text grammar (a pest
//! grammar, so a page with one malformed line fails to parse as a whole), flattened to one
//! [`MetricSample`] per series.

use std::collections::BTreeMap;

use openmetrics_parser::{PrometheusType, PrometheusValue};

/// One series of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    /// The family's name as its `# TYPE` line gives it (a counter's ends in `_total`).
    pub family: String,
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub kind: String,
    /// Label names and values.
    pub labels: BTreeMap<String, String>,
    /// The value; a histogram's or summary's observation count.
    pub value: f64,
    /// A histogram's buckets: (upper bound, cumulative count).
    pub buckets: Vec<(f64, f64)>,
}

impl MetricSample {
    /// Whether every `(name, value)` of `labels` is among its labels.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// Every series of `text`, or why the text is not the Prometheus text format.
pub fn parse_metrics(text: &str) -> Result<Vec<MetricSample>, String> {
    let exposition =
        openmetrics_parser::prometheus::parse_prometheus(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (name, family) in &exposition.families {
        let kind = match family.family_type {
            PrometheusType::Counter => "counter",
            PrometheusType::Gauge => "gauge",
            PrometheusType::Histogram => "histogram",
            PrometheusType::Summary => "summary",
            PrometheusType::Unknown => "untyped",
        };
        let names = family.get_label_names().to_vec();
        for sample in family.iter_samples() {
            let labels = sample
                .get_labelset()
                .map_err(|e| e.to_string())?
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>();
            debug_assert!(labels.len() <= names.len());
            let (value, buckets) = match &sample.value {
                PrometheusValue::Unknown(n) | PrometheusValue::Gauge(n) => (n.as_f64(), vec![]),
                PrometheusValue::Counter(c) => (c.value.as_f64(), vec![]),
                PrometheusValue::Histogram(h) => {
                    let buckets: Vec<(f64, f64)> = h
                        .buckets
                        .iter()
                        .map(|b| (b.upper_bound, b.count.as_f64()))
                        .collect();
                    let count = h
                        .count
                        .map(|c| c as f64)
                        .unwrap_or_else(|| buckets.iter().map(|b| b.1).fold(0.0, f64::max));
                    (count, buckets)
                }
                PrometheusValue::Summary(s) => (s.count.unwrap_or(0) as f64, vec![]),
            };
            out.push(MetricSample {
                family: name.clone(),
                kind: kind.to_string(),
                labels,
                value,
                buckets,
            });
        }
    }
    Ok(out)
}
