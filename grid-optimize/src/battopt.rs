//! The `battopt-instance/1` / `battopt-solution/1` interchange format: parsing instances into a [`FleetProblem`]
//! and writing solutions.
//!
//! Parsing walks the JSON tree by hand so that every problem is reported with the path of the offending field
//! (`sites[0].battery.e_max: expected a number, got a string`), including `NaN`/`Infinity` tokens that some
//! writers (Python's `json`) emit although JSON has no such numbers. The instance's `reference` block is never
//! read. A `null` `load` or `pv` means all zeros. The parsed problem is validated ([`FleetProblem::validate`]).
//!
//! ```
//! # fn main() -> grid_optimize::Result<()> {
//! let json = r#"{"schema": "battopt-instance/1", "name": "tiny", "T": 2, "dt": 1.0,
//!   "import_price": [0.1, 0.3], "export_price": [0.05, 0.05], "feeder": null,
//!   "sites": [{"id": "site0", "load": [1.0, 1.0], "pv": null, "grid_import_max": 10.0,
//!     "grid_export_max": 10.0, "demand_charge": 0.0,
//!     "battery": {"e_min": 0.0, "e_max": 2.0, "e0": 0.0, "e_final_min": null, "p_ch_max": 2.0,
//!                 "p_dis_max": 2.0, "eta_ch": 1.0, "eta_dis": 1.0, "deg_cost": 0.0}}]}"#;
//! let problem = grid_optimize::battopt::parse_instance(json)?;
//! assert_eq!(problem.slots(), 2);
//! assert_eq!(problem.sites[0].pv, vec![0.0, 0.0]);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::problem::{BatteryParams, FeederLimit, FleetProblem, SiteProblem};
use crate::solution::{FleetSolution, SolveStatus};
use serde_json::{Map, Value};

/// The instance schema this module reads.
pub const INSTANCE_SCHEMA: &str = "battopt-instance/1";
/// The solution schema this module writes.
pub const SOLUTION_SCHEMA: &str = "battopt-solution/1";

/// Parses and validates a `battopt-instance/1` document.
///
/// Errors: [`Error::Malformed`] when the text is not JSON, [`Error::InvalidInput`] naming the field otherwise.
pub fn parse_instance(text: &str) -> Result<FleetProblem> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(first) => {
            // Python's json writes NaN / Infinity as bare tokens; quote them so the field walk can name the field.
            let quoted =
                quote_non_finite_tokens(text).ok_or_else(|| Error::Malformed(first.to_string()))?;
            serde_json::from_str(&quoted).map_err(|_| Error::Malformed(first.to_string()))?
        }
    };
    parse_instance_value(&value)
}

/// Builds and validates a [`FleetProblem`] from an already parsed `battopt-instance/1` JSON value.
pub fn parse_instance_value(root: &Value) -> Result<FleetProblem> {
    let obj = root.as_object().ok_or_else(|| {
        Error::invalid(
            "(document)",
            format!("expected a JSON object, got {}", kind(root)),
        )
    })?;
    match obj.get("schema") {
        Some(Value::String(s)) if s == INSTANCE_SCHEMA => {}
        Some(Value::String(s)) => {
            return Err(Error::invalid(
                "schema",
                format!("unsupported schema {s:?}, expected {INSTANCE_SCHEMA:?}"),
            ));
        }
        Some(v) => {
            return Err(Error::invalid(
                "schema",
                format!("expected a string, got {}", kind(v)),
            ));
        }
        None => return Err(Error::invalid("schema", "missing field")),
    }
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let t_raw = number(obj, "T", "T")?;
    if !(t_raw >= 1.0 && t_raw.fract() == 0.0 && t_raw <= 1e7) {
        return Err(Error::invalid(
            "T",
            format!("expected a positive whole number of slots, got {t_raw}"),
        ));
    }
    let t = t_raw as usize;
    let dt = number(obj, "dt", "dt")?;
    let import_price = series(obj, "import_price", "import_price", t)?;
    let export_price = series(obj, "export_price", "export_price", t)?;
    let feeder = match field(obj, "feeder", "feeder")? {
        Value::Null => None,
        Value::Object(f) => Some(FeederLimit {
            import_limit: series(f, "import_limit", "feeder.import_limit", t)?,
            export_limit: series(f, "export_limit", "feeder.export_limit", t)?,
        }),
        v => {
            return Err(Error::invalid(
                "feeder",
                format!("expected an object or null, got {}", kind(v)),
            ));
        }
    };
    let sites_v = match field(obj, "sites", "sites")? {
        Value::Array(a) => a,
        v => {
            return Err(Error::invalid(
                "sites",
                format!("expected an array, got {}", kind(v)),
            ));
        }
    };
    let mut sites = Vec::with_capacity(sites_v.len());
    for (i, sv) in sites_v.iter().enumerate() {
        sites.push(parse_site(sv, i, t)?);
    }
    let problem = FleetProblem {
        name,
        dt,
        import_price,
        export_price,
        sites,
        feeder,
        tracking: None,
    };
    problem.validate()?;
    Ok(problem)
}

fn parse_site(v: &Value, i: usize, t: usize) -> Result<SiteProblem> {
    let path = format!("sites[{i}]");
    let obj = v.as_object().ok_or_else(|| {
        Error::invalid(path.clone(), format!("expected an object, got {}", kind(v)))
    })?;
    let p = |f: &str| format!("{path}.{f}");
    let id = match field(obj, "id", &p("id"))? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        v => {
            return Err(Error::invalid(
                p("id"),
                format!("expected a string, got {}", kind(v)),
            ));
        }
    };
    let load = nullable_series(obj, "load", &p("load"), t)?;
    let pv = nullable_series(obj, "pv", &p("pv"), t)?;
    let bpath = p("battery");
    let bobj = match field(obj, "battery", &bpath)? {
        Value::Object(b) => b,
        v => {
            return Err(Error::invalid(
                bpath,
                format!("expected an object, got {}", kind(v)),
            ));
        }
    };
    let b = |f: &str| format!("{bpath}.{f}");
    let e_final_min = match field(bobj, "e_final_min", &b("e_final_min"))? {
        Value::Null => None,
        _ => Some(number(bobj, "e_final_min", &b("e_final_min"))?),
    };
    let battery = BatteryParams {
        e_min: number(bobj, "e_min", &b("e_min"))?,
        e_max: number(bobj, "e_max", &b("e_max"))?,
        e0: number(bobj, "e0", &b("e0"))?,
        e_final_min,
        p_ch_max: number(bobj, "p_ch_max", &b("p_ch_max"))?,
        p_dis_max: number(bobj, "p_dis_max", &b("p_dis_max"))?,
        eta_ch: number(bobj, "eta_ch", &b("eta_ch"))?,
        eta_dis: number(bobj, "eta_dis", &b("eta_dis"))?,
        deg_cost: number(bobj, "deg_cost", &b("deg_cost"))?,
    };
    Ok(SiteProblem {
        id,
        load,
        pv,
        grid_import_max: number(obj, "grid_import_max", &p("grid_import_max"))?,
        grid_export_max: number(obj, "grid_export_max", &p("grid_export_max"))?,
        demand_charge: number(obj, "demand_charge", &p("demand_charge"))?,
        battery,
        power_bounds: None,
        wear_quadratic: 0.0,
    })
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(a) => format!("an array of {} values", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Value> {
    obj.get(key)
        .ok_or_else(|| Error::invalid(path, "missing field"))
}

fn as_number(v: &Value, path: &str) -> Result<f64> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| Error::invalid(path, format!("number {n} is not a finite double"))),
        Value::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => Err(
            Error::invalid(path, format!("expected a finite number, got {s}")),
        ),
        other => Err(Error::invalid(
            path,
            format!("expected a number, got {}", kind(other)),
        )),
    }
}

fn number(obj: &Map<String, Value>, key: &str, path: &str) -> Result<f64> {
    as_number(field(obj, key, path)?, path)
}

fn array_values(v: &Value, path: &str, t: usize) -> Result<Vec<f64>> {
    let a = match v {
        Value::Array(a) => a,
        other => {
            return Err(Error::invalid(
                path,
                format!("expected an array of {t} numbers, got {}", kind(other)),
            ));
        }
    };
    if a.len() != t {
        return Err(Error::invalid(
            path,
            format!("expected {t} values (one per slot), got {}", a.len()),
        ));
    }
    a.iter()
        .enumerate()
        .map(|(k, x)| as_number(x, &format!("{path}[{k}]")))
        .collect()
}

fn series(obj: &Map<String, Value>, key: &str, path: &str, t: usize) -> Result<Vec<f64>> {
    array_values(field(obj, key, path)?, path, t)
}

fn nullable_series(obj: &Map<String, Value>, key: &str, path: &str, t: usize) -> Result<Vec<f64>> {
    match field(obj, key, path)? {
        Value::Null => Ok(vec![0.0; t]),
        v => array_values(v, path, t),
    }
}

/// Quotes bare `NaN`, `Infinity` and `-Infinity` tokens outside strings; `None` when there were none.
fn quote_non_finite_tokens(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut changed = false;
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|tok| rest.starts_with(tok));
        if let Some(tok) = token {
            out.push_str(&text[last..i]);
            out.push('"');
            out.push_str(tok);
            out.push('"');
            i += tok.len();
            last = i;
            changed = true;
        } else {
            i += 1;
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// The `battopt-solution/1` document, in the format's field order.
#[derive(serde::Serialize)]
struct SolutionDoc<'a> {
    schema: &'static str,
    instance: &'a str,
    status: &'static str,
    objective: Option<f64>,
    reason: Option<&'a str>,
    solve_seconds: f64,
    sites: Vec<SiteDoc<'a>>,
}

#[derive(serde::Serialize)]
struct SiteDoc<'a> {
    id: &'a str,
    charge: &'a [f64],
    discharge: &'a [f64],
    grid_import: &'a [f64],
    grid_export: &'a [f64],
    soc_end: &'a [f64],
    peak_import: Option<f64>,
}

fn document<'a>(
    problem: &'a FleetProblem,
    solution: &'a FleetSolution,
    solve_seconds: f64,
) -> SolutionDoc<'a> {
    let (objective, reason) = match &solution.status {
        SolveStatus::Infeasible { reason } => (None, Some(reason.as_str())),
        _ => (
            Some(problem.objective(solution)).filter(|v| v.is_finite()),
            None,
        ),
    };
    SolutionDoc {
        schema: SOLUTION_SCHEMA,
        instance: &problem.name,
        status: solution.status.as_str(),
        objective,
        reason,
        solve_seconds,
        sites: solution
            .sites
            .iter()
            .map(|s| SiteDoc {
                id: &s.id,
                charge: &s.charge,
                discharge: &s.discharge,
                grid_import: &s.grid_import,
                grid_export: &s.grid_export,
                soc_end: &s.soc_end,
                peak_import: s.peak_import,
            })
            .collect(),
    }
}

/// Writes `solution` of `problem` as a `battopt-solution/1` document (one line, or indented when `pretty`).
///
/// The objective is recomputed from the returned schedule with [`FleetProblem::objective`] (`null` when
/// infeasible); `solve_seconds` is the time spent inside the solver. Non-finite numbers are written as `null`.
pub fn write_solution<W: std::io::Write>(
    writer: W,
    problem: &FleetProblem,
    solution: &FleetSolution,
    solve_seconds: f64,
    pretty: bool,
) -> std::io::Result<()> {
    let doc = document(problem, solution, solve_seconds);
    let r = if pretty {
        serde_json::to_writer_pretty(writer, &doc)
    } else {
        serde_json::to_writer(writer, &doc)
    };
    r.map_err(std::io::Error::from)
}

/// The `battopt-solution/1` document of `solution` as an indented JSON string ending in a newline
/// (see [`write_solution`]).
pub fn solution_to_json(
    problem: &FleetProblem,
    solution: &FleetSolution,
    solve_seconds: f64,
) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and the document has only strings and numbers.
    let _ = write_solution(&mut out, problem, solution, solve_seconds, true);
    out.push(b'\n');
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Value {
        serde_json::json!({"schema": "battopt-instance/1", "name": "tiny", "T": 2, "dt": 1.0,
          "import_price": [0.1, 0.3], "export_price": [0.05, 0.05], "feeder": null,
          "sites": [{"id": "site0", "load": [1.0, 1.0], "pv": null, "grid_import_max": 10.0,
            "grid_export_max": 10.0, "demand_charge": 0.0,
            "battery": {"e_min": 0.0, "e_max": 2.0, "e0": 0.0, "e_final_min": null, "p_ch_max": 2.0,
                        "p_dis_max": 2.0, "eta_ch": 1.0, "eta_dis": 1.0, "deg_cost": 0.0}}]})
    }

    fn err_field(v: &Value) -> String {
        match parse_instance_value(v) {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn parses_tiny() {
        let p = parse_instance_value(&tiny()).expect("valid");
        assert_eq!(p.sites[0].pv, vec![0.0, 0.0]);
        assert_eq!(p.sites[0].battery.e_final_min, None);
    }

    #[test]
    fn names_missing_and_wrong_fields() {
        let mut v = tiny();
        v["sites"][0]["battery"]
            .as_object_mut()
            .expect("object")
            .remove("e_max");
        assert_eq!(err_field(&v), "sites[0].battery.e_max");
        let mut v = tiny();
        v["sites"][0]["battery"]["p_ch_max"] = serde_json::json!(-1.0);
        assert_eq!(err_field(&v), "sites[0].battery.p_ch_max");
        let mut v = tiny();
        v["sites"][0]["load"] = serde_json::json!([1.0]);
        assert_eq!(err_field(&v), "sites[0].load");
        let mut v = tiny();
        v["import_price"][1] = serde_json::json!("NaN");
        assert_eq!(err_field(&v), "import_price[1]");
        let mut v = tiny();
        v["sites"][0]["battery"]["eta_ch"] = serde_json::json!(1.5);
        assert_eq!(err_field(&v), "sites[0].battery.eta_ch");
    }

    #[test]
    fn bare_nan_token_names_the_field() {
        let text = tiny().to_string().replace("\"e0\":0.0", "\"e0\":NaN");
        assert!(text.contains("NaN"));
        match parse_instance(&text) {
            Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "sites[0].battery.e0"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse_instance("{not json"),
            Err(Error::Malformed(_))
        ));
    }
}
