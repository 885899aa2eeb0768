//! TEMPORARY STUB (replaced by the real module).
pub type Labels = std::collections::BTreeMap<String, String>;
#[derive(serde::Deserialize, serde::Serialize, Debug, Clone)]
pub struct RuleConfig { pub action: Option<String> }
#[derive(Debug, Clone)]
pub struct Rule;
impl Rule { pub fn compile(_c: &RuleConfig, _i: usize) -> Result<Rule, String> { Ok(Rule) } }
pub fn apply(_rules: &[Rule], labels: &Labels) -> Option<Labels> { Some(labels.clone()) }
