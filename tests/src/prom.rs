//! A small parser for the Prometheus text exposition format, enough to assert exact values.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub samples: Vec<Sample>,
    /// `# TYPE` lines: metric name → type.
    pub types: BTreeMap<String, String>,
    /// `# HELP` lines: metric name → text.
    pub help: BTreeMap<String, String>,
}

impl Samples {
    /// The value of the one series with exactly these labels, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
    }

    /// The value of a series that must exist: panics naming the series (and the ones of that
    /// name that do exist) when it is missing, so that an expected 0 is never a missing series.
    pub fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| {
            let present: Vec<_> = self.series(name).iter().map(|s| &s.labels).collect();
            panic!("no series {name}{labels:?}; the series of {name} are: {present:?}")
        })
    }

    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

pub fn parse(text: &str) -> Samples {
    let mut out = Samples::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.splitn(2, ' ');
            out.types.insert(it.next().unwrap().into(), it.next().unwrap_or("").into());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let mut it = rest.splitn(2, ' ');
            out.help.insert(it.next().unwrap().into(), it.next().unwrap_or("").into());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], parse_labels(&series[i + 1..series.len() - 1])),
            None => (series, BTreeMap::new()),
        };
        out.samples.push(Sample { name: name.into(), labels, value });
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_labels_and_escapes() {
        let s = super::parse("# TYPE a counter\na{x=\"1\",y=\"q\\\"z\"} 3\nb 4.5\n");
        assert_eq!(s.expect("a", &[("x", "1"), ("y", "q\"z")]), 3.0);
        assert_eq!(s.expect("b", &[]), 4.5);
        assert_eq!(s.types["a"], "counter");
    }

    #[test]
    #[should_panic(expected = "no series a[(\"x\", \"2\")]")]
    fn expect_fails_on_a_missing_series_instead_of_reading_zero() {
        let s = super::parse("a{x=\"1\"} 0\n");
        assert_eq!(s.value("a", &[("x", "2")]), None);
        s.expect("a", &[("x", "2")]);
    }
}
