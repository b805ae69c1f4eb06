//! A strict reader of the OpenMetrics / Prometheus text exposition,
//! for tests and tools that scrape a gateway. It rejects what
//! Prometheus would reject (bad names, labels, values, samples
//! outside their family, duplicate series, inconsistent histograms)
//! rather than skipping it.

use std::collections::{HashMap, HashSet};

/// A `# TYPE` declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name && labels.iter().all(|&(k, v)| self.label(k) == Some(v))
    }
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub families: Vec<Family>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the one series named `name` whose labels include
    /// `labels`; `None` when there is none or more than one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| s.matches(name, labels));
        let first = found.next()?;
        match found.next() {
            Some(_) => None,
            None => Some(first.value),
        }
    }

    /// The sum over every series named `name` whose labels include
    /// `labels` (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.matches(name, labels))
            .map(|s| s.value)
            .sum()
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    is_name(s) && !s.contains(':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and
/// the rest of the line.
/// Label names and values in the order written.
type Labels = Vec<(String, String)>;

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = &s[1..];
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in label value: {other:?}")),
                },
                Some((_, '\n')) | None => return Err("unterminated label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name:?} given twice"));
        }
        labels.push((name.to_owned(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by ','".into());
        }
    }
}

/// The suffixes a sample of a family of `kind` may carry.
fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" | "gaugehistogram" => {
            &["_bucket", "_sum", "_count", "_created", "_gcount", "_gsum"]
        }
        "summary" => &["", "_sum", "_count", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Parses and checks an exposition.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut current: Option<usize> = None;
    let mut declared = HashSet::new();
    let mut series = HashSet::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if eof {
            return Err(at("text after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let rest = parts.next().unwrap_or("");
            if !is_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            match keyword {
                "TYPE" => {
                    const KINDS: [&str; 8] = [
                        "counter",
                        "gauge",
                        "histogram",
                        "gaugehistogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                    ];
                    if !KINDS.contains(&rest) {
                        return Err(at(format!("unknown type {rest:?}")));
                    }
                    if !declared.insert(name.to_owned()) {
                        return Err(at(format!("family {name} declared twice")));
                    }
                    let help = match out.families.last() {
                        Some(f) if f.name == name && f.kind.is_empty() => {
                            out.families.pop().and_then(|f| f.help)
                        }
                        _ => None,
                    };
                    out.families.push(Family {
                        name: name.to_owned(),
                        kind: rest.to_owned(),
                        help,
                    });
                    current = Some(out.families.len() - 1);
                }
                "HELP" => {
                    // HELP comes before TYPE in what prometheus-client
                    // writes; hold it until the TYPE line.
                    out.families.push(Family {
                        name: name.to_owned(),
                        kind: String::new(),
                        help: Some(rest.to_owned()),
                    });
                    current = None;
                }
                "UNIT" => {
                    if current.map(|i| out.families[i].name.as_str()) != Some(name) {
                        return Err(at("UNIT for a family that is not the current one".into()));
                    }
                }
                _ => return Err(at(format!("unknown metadata {keyword:?}"))),
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(at("unexpected comment or empty line".into()));
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("sample without value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?
            .split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            parse_value(ts).map_err(|e| at(format!("timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = current
            .map(|i| &out.families[i])
            .ok_or_else(|| at("sample outside a declared family".into()))?;
        let suffix = name
            .strip_prefix(family.name.as_str())
            .ok_or_else(|| at(format!("sample not of family {}", family.name)))?;
        if !suffixes(&family.kind).contains(&suffix) {
            return Err(at(format!(
                "suffix {suffix:?} not allowed for a {} family",
                family.kind
            )));
        }
        if family.kind == "counter" && suffix == "_total" && (value < 0.0 || value.is_nan()) {
            return Err(at("negative counter".into()));
        }
        let mut key: Vec<_> = labels.clone();
        key.sort();
        if !series.insert((name.to_owned(), key)) {
            return Err(at("duplicate series".into()));
        }
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    if let Some(f) = out.families.iter().find(|f| f.kind.is_empty()) {
        return Err(format!("HELP for {} without TYPE", f.name));
    }
    check_histograms(&out)?;
    Ok(out)
}

/// Buckets cumulative, ending in `+Inf` equal to `_count`.
fn check_histograms(exp: &Exposition) -> Result<(), String> {
    type Series = Vec<(String, String)>;
    for family in exp.families.iter().filter(|f| f.kind == "histogram") {
        let bucket = format!("{}_bucket", family.name);
        let count = format!("{}_count", family.name);
        let mut buckets: HashMap<Series, Vec<(f64, f64)>> = HashMap::new();
        for s in exp.samples.iter().filter(|s| s.name == bucket) {
            let le = s
                .label("le")
                .ok_or_else(|| format!("{bucket} without le"))
                .and_then(parse_value)?;
            let mut rest: Series = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            rest.sort();
            buckets.entry(rest).or_default().push((le, s.value));
        }
        for s in exp.samples.iter().filter(|s| s.name == count) {
            let mut key = s.labels.clone();
            key.sort();
            let list = buckets
                .get(&key)
                .ok_or_else(|| format!("{count} {key:?} without buckets"))?;
            let mut last = (f64::NEG_INFINITY, 0.0);
            for &(le, v) in list {
                if le <= last.0 || v < last.1 {
                    return Err(format!("{bucket} {key:?}: buckets not cumulative"));
                }
                last = (le, v);
            }
            if last.0 != f64::INFINITY || last.1 != s.value {
                return Err(format!(
                    "{bucket} {key:?}: +Inf bucket does not equal {count}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_rejects_what_prometheus_would() {
        let ok = "# HELP x things\n# TYPE x counter\nx_total{a=\"1\"} 2\n# EOF\n";
        assert!(parse(ok).is_ok());
        for bad in [
            "# TYPE x counter\nx_total 1\n",                        // no EOF
            "# TYPE x counter\nx 1\n# EOF\n",                        // counter without _total
            "# TYPE x counter\nx_total{a=1} 1\n# EOF\n",             // unquoted label
            "# TYPE x counter\nx_total 1\nx_total 2\n# EOF\n",       // duplicate series
            "# TYPE x gauge\nx abc\n# EOF\n",                        // bad value
            "y 1\n# EOF\n",                                          // no family
            "# TYPE x gauge\nx 1\n# EOF\nx 2\n",                     // after EOF
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n# EOF\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
