//! Everything `GET /metrics` prints, in the Prometheus text format: the recorder's families, then
//! the families kept outside the recorder (the exact-decimal cost counter, the GPU node gauges).
//! All hand-rendered label values go through the one escaper here.

use std::{
    borrow::Cow,
    fmt::{Display, Write as _},
};

use metrics_exporter_prometheus::PrometheusHandle;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::metrics::{
    GPU_NODE_UP, GPU_NODE_UP_HELP, GPU_NODE_UTILIZATION_PCT, GPU_NODE_UTILIZATION_PCT_HELP, LLM_COST,
    LLM_COST_USD_TOTAL, LLM_COST_USD_TOTAL_HELP,
};

/// One GPU node as its gauges show it; the fleet fills these from its last poll.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuNodeGauge {
    pub node_id: Uuid,
    pub name: String,
    pub up: bool,
    /// Only rendered while the node is up: a down node's last figure would be a stale claim.
    pub utilization_pct: Option<f64>,
}

/// The whole `/metrics` body.
pub fn render(handle: &PrometheusHandle, gpu_nodes: &[GpuNodeGauge]) -> String {
    let mut out = handle.render();
    render_cost(&mut out, &LLM_COST.totals());
    render_gpu_nodes(&mut out, gpu_nodes);
    out
}

/// `pr_llm_cost_usd_total{model,endpoint}` from exact decimal sums, printed without float
/// rounding so the series equals the ledger's sum.
fn render_cost(out: &mut String, totals: &[(&str, &str, Decimal)]) {
    // HELP and TYPE even without a model (an empty catalog): the family is declared.
    family(out, LLM_COST_USD_TOTAL, "counter", LLM_COST_USD_TOTAL_HELP);
    for (model, endpoint, total) in totals {
        sample(out, LLM_COST_USD_TOTAL, &[("model", model), ("endpoint", endpoint)], total.normalize());
    }
}

/// `pr_gpu_node_up` and `pr_gpu_node_utilization_pct` per registered node, ordered by name.
fn render_gpu_nodes(out: &mut String, nodes: &[GpuNodeGauge]) {
    let mut nodes: Vec<&GpuNodeGauge> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    // HELP and TYPE even without a node: the families are declared, with no series to show.
    family(out, GPU_NODE_UP, "gauge", GPU_NODE_UP_HELP);
    for node in &nodes {
        let id = node.node_id.to_string();
        sample(out, GPU_NODE_UP, &[("node_id", &id), ("name", &node.name)], u8::from(node.up));
    }
    family(out, GPU_NODE_UTILIZATION_PCT, "gauge", GPU_NODE_UTILIZATION_PCT_HELP);
    for node in &nodes {
        if let (true, Some(util)) = (node.up, node.utilization_pct) {
            let id = node.node_id.to_string();
            sample(out, GPU_NODE_UTILIZATION_PCT, &[("node_id", &id), ("name", &node.name)], util);
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    for (i, (label, v)) in labels.iter().enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        let _ = write!(out, "{label}=\"{}\"", escape_label(v));
    }
    if !labels.is_empty() {
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the text format requires: backslash, double quote and line feed escaped
/// (`\\`, `\"`, `\n`); every other character as is. Borrowed when nothing needs escaping.
pub fn escape_label(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    let mut escaped = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    fn node(name: &str, up: bool, utilization_pct: Option<f64>) -> GpuNodeGauge {
        GpuNodeGauge { node_id: Uuid::new_v4(), name: name.into(), up, utilization_pct }
    }

    #[test]
    fn the_escaper_escapes_backslash_quote_and_newline_only() {
        assert_eq!(escape_label(r"a\b"), r"a\\b");
        assert_eq!(escape_label(r#"say "hi""#), r#"say \"hi\""#);
        assert_eq!(escape_label("two\nlines"), r"two\nlines");
        // Order matters: a backslash added for a quote is not escaped again.
        assert_eq!(escape_label("\\\"\n"), r#"\\\"\n"#);
        assert_eq!(escape_label("tab\there {x} é,="), "tab\there {x} é,=");
        assert!(matches!(escape_label("gpt-4o/mini"), Cow::Borrowed(_)));
    }

    #[test]
    fn cost_is_rendered_as_exact_decimals_with_escaped_labels() {
        let mut out = String::new();
        let tenth = Decimal::from_str("0.1").unwrap();
        let total = tenth + Decimal::from_str("0.2").unwrap();
        render_cost(
            &mut out,
            &[
                ("m\"1", "chat_completions", total),
                ("m2", "embeddings", Decimal::from_str("0.000222000").unwrap()),
                ("m3", "messages", Decimal::ZERO),
            ],
        );
        assert_eq!(
            out,
            format!(
                "# HELP pr_llm_cost_usd_total {LLM_COST_USD_TOTAL_HELP}\n# TYPE pr_llm_cost_usd_total counter\n\
                 pr_llm_cost_usd_total{{model=\"m\\\"1\",endpoint=\"chat_completions\"}} 0.3\n\
                 pr_llm_cost_usd_total{{model=\"m2\",endpoint=\"embeddings\"}} 0.000222\n\
                 pr_llm_cost_usd_total{{model=\"m3\",endpoint=\"messages\"}} 0\n"
            )
        );
    }

    #[test]
    fn gpu_nodes_are_ordered_by_name_and_utilization_shows_only_while_up() {
        let (b, a, down, unknown) = (
            node("b", true, Some(12.5)),
            node("a\\\n", true, Some(90.0)),
            node("c", false, Some(50.0)),
            node("d", true, None),
        );
        let mut out = String::new();
        render_gpu_nodes(&mut out, &[b.clone(), down.clone(), a.clone(), unknown.clone()]);
        let (up, util) = (GPU_NODE_UP, GPU_NODE_UTILIZATION_PCT);
        let expected = format!(
            "# HELP {up} {GPU_NODE_UP_HELP}\n# TYPE {up} gauge\n\
             {up}{{node_id=\"{}\",name=\"a\\\\\\n\"}} 1\n\
             {up}{{node_id=\"{}\",name=\"b\"}} 1\n\
             {up}{{node_id=\"{}\",name=\"c\"}} 0\n\
             {up}{{node_id=\"{}\",name=\"d\"}} 1\n\
             # HELP {util} {GPU_NODE_UTILIZATION_PCT_HELP}\n# TYPE {util} gauge\n\
             {util}{{node_id=\"{}\",name=\"a\\\\\\n\"}} 90\n\
             {util}{{node_id=\"{}\",name=\"b\"}} 12.5\n",
            a.node_id, b.node_id, down.node_id, unknown.node_id, a.node_id, b.node_id
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn without_nodes_the_gpu_families_are_declared_with_no_series() {
        let mut out = String::new();
        render_gpu_nodes(&mut out, &[]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines.iter().all(|l| l.starts_with("# ")), "{out}");
    }

    #[test]
    fn the_body_is_the_recorder_output_then_cost_then_gpu_families() {
        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || metrics::counter!("pr_test_total", "k" => "v\"").increment(3));
        let node = node("n", true, Some(1.0));
        let text = render(&recorder.handle(), std::slice::from_ref(&node));
        let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle:?} missing from:\n{text}"));
        // The exporter escapes its own label values the same way.
        assert!(at("pr_test_total{k=\"v\\\"\"} 3") < at("# TYPE pr_llm_cost_usd_total counter"));
        assert!(at("# TYPE pr_llm_cost_usd_total counter") < at("# TYPE pr_gpu_node_up gauge"));
        assert!(text.contains(&format!("pr_gpu_node_utilization_pct{{node_id=\"{}\",name=\"n\"}} 1\n", node.node_id)));
        for family in [LLM_COST_USD_TOTAL, GPU_NODE_UP, GPU_NODE_UTILIZATION_PCT] {
            assert_eq!(text.matches(&format!("# TYPE {family} ")).count(), 1, "{family} declared once");
        }
    }
}
