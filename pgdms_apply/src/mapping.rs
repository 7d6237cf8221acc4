//! Table mappings, in the reference's JSON table-mapping format.
//!
//! ```json
//! {"rules": [
//!   {"rule-type": "selection", "rule-id": "1", "rule-name": "1", "rule-action": "include",
//!    "object-locator": {"schema-name": "public", "table-name": "%"}},
//!   {"rule-type": "selection", "rule-id": "2", "rule-name": "2", "rule-action": "exclude",
//!    "object-locator": {"schema-name": "public", "table-name": "audit%"}},
//!   {"rule-type": "transformation", "rule-id": "3", "rule-name": "3", "rule-target": "table",
//!    "object-locator": {"schema-name": "public", "table-name": "%"},
//!    "rule-action": "add-prefix", "value": "old_"},
//!   {"rule-type": "transformation", "rule-id": "4", "rule-name": "4", "rule-target": "column",
//!    "object-locator": {"schema-name": "%", "table-name": "%", "column-name": "ssn"},
//!    "rule-action": "remove-column"}
//! ]}
//! ```
//!
//! Selection: with no selection rule every table is included; otherwise a table is included
//! when an include rule matches it and no exclude rule does. Locators match the source's
//! names, `%` standing for any run of characters. Transformations (`rule-target` schema,
//! table or column; `rule-action` rename, add-prefix, remove-prefix, add-suffix,
//! remove-suffix, convert-lowercase, convert-uppercase, and remove-column for columns) apply
//! in rule-id order, each to the name the previous ones produced.

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("table mappings: {0}")]
    Json(#[from] serde_json::Error),
    #[error("table mappings, rule {id}: {what}")]
    Rule { id: String, what: String },
}

#[derive(Deserialize)]
struct File {
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawRule {
    rule_type: String,
    #[serde(default)]
    rule_id: serde_json::Value,
    rule_action: String,
    #[serde(default)]
    rule_target: Option<String>,
    object_locator: Locator,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
struct Locator {
    schema_name: String,
    #[serde(default)]
    table_name: Option<String>,
    #[serde(default)]
    column_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Schema,
    Table,
    Column,
}

#[derive(Debug, Clone)]
enum Action {
    Rename(String),
    AddPrefix(String),
    RemovePrefix(String),
    AddSuffix(String),
    RemoveSuffix(String),
    Lowercase,
    Uppercase,
    RemoveColumn,
}

#[derive(Debug, Clone)]
struct Transformation {
    target: Target,
    locator: Locator,
    action: Action,
}

#[derive(Debug, Clone, Default)]
pub struct Mapping {
    includes: Vec<Locator>,
    excludes: Vec<Locator>,
    transformations: Vec<Transformation>,
}

/// `%` matches any run of characters; everything else matches itself.
pub(crate) fn like(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('%').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Locator {
    fn matches(&self, schema: &str, table: Option<&str>, column: Option<&str>) -> bool {
        let opt = |p: &Option<String>, v: Option<&str>| match (p, v) {
            (Some(p), Some(v)) => like(p, v),
            _ => true,
        };
        like(&self.schema_name, schema) && opt(&self.table_name, table) && opt(&self.column_name, column)
    }
}

impl Mapping {
    pub fn parse(json: &str) -> Result<Mapping, MappingError> {
        let file: File = serde_json::from_str(json)?;
        let mut rules: Vec<(String, RawRule)> = file
            .rules
            .into_iter()
            .map(|r| {
                let id = match &r.rule_id {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (id, r)
            })
            .collect();
        // In rule-id order (numerically when the ids are numbers, as they usually are).
        rules.sort_by_key(|(id, _)| match id.parse::<u64>() {
            Ok(n) => (0, n, String::new()),
            Err(_) => (1, 0, id.clone()),
        });
        let mut m = Mapping::default();
        for (id, r) in rules {
            let bad = |what: String| MappingError::Rule { id: id.clone(), what };
            match r.rule_type.as_str() {
                "selection" => match r.rule_action.as_str() {
                    "include" => m.includes.push(r.object_locator),
                    "exclude" => m.excludes.push(r.object_locator),
                    other => return Err(bad(format!("rule-action \"{other}\": selection takes include or exclude"))),
                },
                "transformation" => {
                    let target = match r.rule_target.as_deref() {
                        Some("schema") => Target::Schema,
                        Some("table") => Target::Table,
                        Some("column") => Target::Column,
                        other => return Err(bad(format!("rule-target {other:?}: use schema, table or column"))),
                    };
                    let value = || {
                        r.value.clone().ok_or_else(|| bad(format!("rule-action \"{}\" needs a value", r.rule_action)))
                    };
                    let action = match r.rule_action.as_str() {
                        "rename" => Action::Rename(value()?),
                        "add-prefix" => Action::AddPrefix(value()?),
                        "remove-prefix" => Action::RemovePrefix(value()?),
                        "add-suffix" => Action::AddSuffix(value()?),
                        "remove-suffix" => Action::RemoveSuffix(value()?),
                        "convert-lowercase" => Action::Lowercase,
                        "convert-uppercase" => Action::Uppercase,
                        "remove-column" if target == Target::Column => Action::RemoveColumn,
                        other => {
                            return Err(bad(format!(
                                "rule-action \"{other}\": use rename, add-prefix, remove-prefix, add-suffix, \
                                 remove-suffix, convert-lowercase, convert-uppercase (or remove-column for columns)"
                            )))
                        }
                    };
                    m.transformations.push(Transformation { target, locator: r.object_locator, action });
                }
                other => return Err(bad(format!("rule-type \"{other}\": use selection or transformation"))),
            }
        }
        Ok(m)
    }

    /// Whether the source table is migrated.
    pub fn includes(&self, schema: &str, table: &str) -> bool {
        let included = self.includes.is_empty() || self.includes.iter().any(|l| l.matches(schema, Some(table), None));
        included && !self.excludes.iter().any(|l| l.matches(schema, Some(table), None))
    }

    fn transform(
        &self,
        target: Target,
        name: &str,
        schema: &str,
        table: Option<&str>,
        column: Option<&str>,
    ) -> Option<String> {
        let mut out = name.to_string();
        for t in self.transformations.iter().filter(|t| t.target == target) {
            if !t.locator.matches(schema, table, column) {
                continue;
            }
            out = match &t.action {
                Action::Rename(v) => v.clone(),
                Action::AddPrefix(v) => format!("{v}{out}"),
                Action::RemovePrefix(v) => out.strip_prefix(v.as_str()).map(str::to_string).unwrap_or(out),
                Action::AddSuffix(v) => format!("{out}{v}"),
                Action::RemoveSuffix(v) => out.strip_suffix(v.as_str()).map(str::to_string).unwrap_or(out),
                Action::Lowercase => out.to_lowercase(),
                Action::Uppercase => out.to_uppercase(),
                Action::RemoveColumn => return None,
            };
        }
        Some(out)
    }

    /// The target's (schema, table) for a source table.
    pub fn table(&self, schema: &str, table: &str) -> (String, String) {
        let s = self.transform(Target::Schema, schema, schema, Some(table), None).unwrap_or_else(|| schema.into());
        let t = self.transform(Target::Table, table, schema, Some(table), None).unwrap_or_else(|| table.into());
        (s, t)
    }

    /// The target's name for a source column, or `None` when it is removed.
    pub fn column(&self, schema: &str, table: &str, column: &str) -> Option<String> {
        self.transform(Target::Column, column, schema, Some(table), Some(column))
    }

    /// Maps a table definition of a DDL record to the target's names (columns the mappings
    /// remove are left out); false when the table is not selected.
    pub fn map_table_def(&self, def: &mut pgdms_proto::TableDef) -> bool {
        let (schema, table) = (def.schema.clone(), def.name.clone());
        if !self.includes(&schema, &table) {
            return false;
        }
        (def.schema, def.name) = self.table(&schema, &table);
        def.columns.retain_mut(|c| match self.column(&schema, &table, &c.name) {
            Some(n) => {
                c.name = n;
                true
            }
            None => false,
        });
        if let Some(p) = def.partition_of.as_mut() {
            (p.schema, p.name) = self.table(&p.schema.clone(), &p.name.clone());
        }
        true
    }

    /// No rule at all: names are the source's.
    pub fn is_identity(&self) -> bool {
        self.includes.is_empty() && self.excludes.is_empty() && self.transformations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"{"rules": [
        {"rule-type": "selection", "rule-id": "1", "rule-name": "1", "rule-action": "include",
         "object-locator": {"schema-name": "public", "table-name": "%"}},
        {"rule-type": "selection", "rule-id": "2", "rule-name": "2", "rule-action": "exclude",
         "object-locator": {"schema-name": "public", "table-name": "audit%"}},
        {"rule-type": "transformation", "rule-id": "10", "rule-name": "10", "rule-target": "table",
         "object-locator": {"schema-name": "public", "table-name": "%"}, "rule-action": "convert-lowercase"},
        {"rule-type": "transformation", "rule-id": "3", "rule-name": "3", "rule-target": "table",
         "object-locator": {"schema-name": "public", "table-name": "Orders"}, "rule-action": "add-prefix", "value": "Old_"},
        {"rule-type": "transformation", "rule-id": "4", "rule-name": "4", "rule-target": "schema",
         "object-locator": {"schema-name": "public"}, "rule-action": "rename", "value": "app"},
        {"rule-type": "transformation", "rule-id": "5", "rule-name": "5", "rule-target": "column",
         "object-locator": {"schema-name": "%", "table-name": "%", "column-name": "ssn"}, "rule-action": "remove-column"},
        {"rule-type": "transformation", "rule-id": "6", "rule-name": "6", "rule-target": "column",
         "object-locator": {"schema-name": "%", "table-name": "Orders", "column-name": "qty"}, "rule-action": "rename", "value": "quantity"}
    ]}"#;

    #[test]
    fn selection_and_transformations_as_the_reference_describes() {
        let m = Mapping::parse(RULES).unwrap();
        assert!(m.includes("public", "Orders"));
        assert!(!m.includes("public", "audit_log"));
        assert!(!m.includes("other", "t"), "not selected by any include rule");
        // Rule 3 then rule 10 (rule-id order, numerically).
        assert_eq!(m.table("public", "Orders"), ("app".into(), "old_orders".into()));
        assert_eq!(m.column("public", "Orders", "ssn"), None);
        assert_eq!(m.column("public", "Orders", "qty").as_deref(), Some("quantity"));
        assert_eq!(m.column("public", "Items", "qty").as_deref(), Some("qty"));
        assert!(Mapping::parse(r#"{"rules": []}"#).unwrap().is_identity());
    }

    #[test]
    fn wildcards() {
        assert!(like("%", ""));
        assert!(like("a%c", "abc") && like("a%c", "ac") && !like("a%c", "ab"));
        assert!(like("%mid%", "x_mid_y") && !like("%mid%", "mi"));
        assert!(like("exact", "exact") && !like("exact", "Exact"));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let err = Mapping::parse(
            r#"{"rules": [{"rule-type": "transformation", "rule-id": "7", "rule-action": "rename",
                "rule-target": "table", "object-locator": {"schema-name": "%", "table-name": "t"}}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("rule 7") && err.to_string().contains("needs a value"), "{err}");
        assert!(Mapping::parse("{").is_err());
    }
}
