//! The checklist result: one item per check, each with a status and the evidence behind it.

use std::fmt::Write as _;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not checked, for a reason the evidence gives (e.g. the component is not deployed).
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// Stable identifier, e.g. `metrics-not-public` (scripts and tests match on it).
    pub id: &'static str,
    pub title: &'static str,
    pub status: Status,
    /// What was sent and what came back, one observation a line.
    pub evidence: Vec<String>,
}

impl Item {
    pub fn new(id: &'static str, title: &'static str) -> Self {
        Self { id, title, status: Status::Pass, evidence: Vec::new() }
    }

    /// Records an observation that does not change the verdict.
    pub fn note(&mut self, line: impl Into<String>) {
        self.evidence.push(line.into());
    }

    /// Records an observation that fails the item.
    pub fn fail(&mut self, line: impl Into<String>) {
        self.status = Status::Fail;
        self.evidence.push(format!("FAIL: {}", line.into()));
    }

    pub fn skip(mut self, reason: impl Into<String>) -> Self {
        self.status = Status::Skipped;
        self.evidence.push(format!("skipped: {}", reason.into()));
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub domain: String,
    /// True when no item failed (skipped items do not count against it).
    pub passed: bool,
    pub items: Vec<Item>,
}

impl Report {
    pub fn new(domain: &str, items: Vec<Item>) -> Self {
        let passed = items.iter().all(|i| i.status != Status::Fail);
        Self { domain: domain.to_string(), passed, items }
    }

    pub fn item(&self, id: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.id == id)
    }

    /// Ids of the failed items, in checklist order.
    pub fn failed(&self) -> Vec<&'static str> {
        self.items.iter().filter(|i| i.status == Status::Fail).map(|i| i.id).collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// The human checklist: one line per item, its evidence indented below it.
    pub fn to_text(&self) -> String {
        let mut out = format!("PrivateRouter hardening audit of {}\n\n", self.domain);
        for item in &self.items {
            let tag = match item.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skipped => "SKIP",
            };
            let _ = writeln!(out, "[{tag}] {:<26} {}", item.id, item.title);
            for line in &item.evidence {
                let _ = writeln!(out, "       {line}");
            }
        }
        let count = |s| self.items.iter().filter(|i| i.status == s).count();
        let (failed, skipped) = (count(Status::Fail), count(Status::Skipped));
        let _ = writeln!(
            out,
            "\nResult: {} ({failed} of {} checks failing, {skipped} skipped)",
            if self.passed { "HARDENED" } else { "NOT HARDENED" },
            self.items.len(),
        );
        out
    }
}
