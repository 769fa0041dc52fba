//! Diagnostics for policy files: what is wrong, where (`file:line:col`), and the offending
//! text, rendered for a terminal or as JSON.

use codespan_reporting::{
    diagnostic::{Diagnostic as Report, Label},
    files::SimpleFiles,
    term,
};
use serde::Serialize;

use super::source::{SourceSet, Span};

/// How bad a finding is: errors stop the policy from compiling, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy is refused.
    Error,
    /// The policy compiles, but probably does not say what its author meant.
    Warning,
}

/// One finding about a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable kebab-case code (`unknown-segment`, `bad-cidr`, ...), for scripts and docs.
    pub code: &'static str,
    /// What is wrong, in one sentence.
    pub message: String,
    /// Where, when the finding has a place.
    pub span: Option<Span>,
    /// Extra lines: hints, related places, numbers.
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            span: Some(span),
            notes: Vec::new(),
        }
    }

    /// A warning at `span`.
    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, span, message)
        }
    }

    /// An error about the policy as a whole.
    pub fn global_error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            span: None,
            notes: Vec::new(),
        }
    }

    /// Adds a note line.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The terminal rendering: `error[code]: message`, then `┌─ file:line:col` and the
    /// source line with the offending text underlined.
    pub fn render(&self, sources: &SourceSet) -> String {
        let mut files = SimpleFiles::new();
        for file in &sources.files {
            files.add(file.path.as_str(), file.text.as_str());
        }
        let report = match self.severity {
            Severity::Error => Report::error(),
            Severity::Warning => Report::warning(),
        }
        .with_code(self.code)
        .with_message(&self.message)
        .with_notes(self.notes.clone());
        let report = match &self.span {
            Some(span) => report.with_labels(vec![Label::primary(span.file, span.range.clone())]),
            None => report,
        };
        term::emit_into_string(&term::Config::default(), &files, &report)
            .unwrap_or_else(|_| format!("{}: {}\n", self.code, self.message))
    }

    /// One line for logs: `file:line:col: error[code]: message`.
    pub fn one_line(&self, sources: &SourceSet) -> String {
        let severity = if self.is_error() { "error" } else { "warning" };
        match &self.span {
            Some(span) => format!(
                "{}: {severity}[{}]: {}",
                sources.location(span),
                self.code,
                self.message
            ),
            None => format!("{severity}[{}]: {}", self.code, self.message),
        }
    }

    /// The machine-readable form.
    pub fn to_json(&self, sources: &SourceSet) -> DiagnosticJson {
        let place = self.span.as_ref().map(|span| {
            let (line, column) = sources.line_col(span.file, span.range.start);
            (
                sources.files[span.file].path.clone(),
                line,
                column,
                sources.text(span).to_owned(),
            )
        });
        let (file, line, column, text) = match place {
            Some((file, line, column, text)) => (Some(file), Some(line), Some(column), Some(text)),
            None => (None, None, None, None),
        };
        DiagnosticJson {
            severity: self.severity,
            code: self.code,
            message: self.message.clone(),
            file,
            line,
            column,
            text,
            notes: self.notes.clone(),
        }
    }
}

/// Sorts diagnostics by place (file, then offset); policy-wide ones come first.
pub fn sort_by_place(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|d| d.span.as_ref().map(|s| (s.file, s.range.start)));
}

/// A diagnostic as JSON: location fields are absent for policy-wide findings.
#[derive(Debug, Clone, Serialize)]
pub struct DiagnosticJson {
    /// `error` or `warning`.
    pub severity: Severity,
    /// The stable code.
    pub code: &'static str,
    /// The message.
    pub message: String,
    /// The file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// The offending text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Extra lines.
    pub notes: Vec<String>,
}
