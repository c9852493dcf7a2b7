//! BuildKit's Dockerfile checks (`bake check`): each rule a function over the
//! parsed file, each finding pointing at its line, `# check=skip=` honoured.

use miette::SourceSpan;

/// One finding of a check rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule's name as BuildKit spells it (`StageNameCasing`).
    pub rule: &'static str,
    pub message: String,
    pub span: SourceSpan,
    /// 1-based line.
    pub line: usize,
}
