//! The `--config` TOML file of `cipgw run`, read generically from the clap
//! definitions: every long flag of `run` (and the global logging flags) is
//! a key of the same name, so a flag added later is a key without any
//! change here.
//!
//! The file is turned into command-line arguments and parsed by clap with
//! the real ones, so a value in the file is checked by the same parser as
//! the flag, and the flags win: a key whose flag was given on the command
//! line is left out. Tables group keys: `[conntrack]` holds
//! `conntrack-max` or `max`, both meaning `--conntrack-max`; any flag's
//! own name is valid in any table (`[dns]` holds `cluster-domain`).

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

/// Flags that cannot come from the file itself.
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// The settable flags: `run`'s own and the global ones, by long name.
pub fn settable_args(cli: &Command) -> Vec<Arg> {
    let run = cli
        .find_subcommand("run")
        .expect("the cipgw command has a run subcommand");
    cli.get_arguments()
        .filter(|a| a.is_global_set())
        .chain(run.get_arguments())
        .filter(|a| a.get_long().is_some_and(|l| !NOT_IN_FILE.contains(&l)))
        .cloned()
        .collect()
}

/// Reads `path` and returns the arguments its keys stand for, leaving out
/// those `given` on the command line. Errors name the file and the key.
pub fn file_args(cli: &Command, path: &Path, given: &ArgMatches) -> Result<Vec<OsString>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("settings file {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("settings file {}: {e}", path.display()))?;
    args_from_table(&settable_args(cli), &table, given)
        .map_err(|e| format!("settings file {}: {e}", path.display()))
}

/// The arguments `table`'s keys stand for (see the module docs).
pub fn args_from_table(
    args: &[Arg],
    table: &toml::Table,
    given: &ArgMatches,
) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                for (sub, value) in inner {
                    // `sub` as the flag it names, or as the table's
                    // flag `key-sub`: `[dns]` holds `dns-address` or
                    // `address`, and `cluster-domain`.
                    let arg = find(args, sub)
                        .or_else(|| find(args, &format!("{key}-{sub}")))
                        .ok_or_else(|| unknown(&format!("[{key}] {sub}"), args))?;
                    push(arg, value, given, &mut out).map_err(|e| format!("[{key}] {sub}: {e}"))?;
                }
            }
            _ => {
                let arg = find(args, key).ok_or_else(|| unknown(key, args))?;
                push(arg, value, given, &mut out).map_err(|e| format!("{key}: {e}"))?;
            }
        }
    }
    Ok(out)
}

fn find<'a>(args: &'a [Arg], key: &str) -> Option<&'a Arg> {
    args.iter().find(|a| a.get_long() == Some(key))
}

fn unknown(key: &str, args: &[Arg]) -> String {
    let known: Vec<&str> = args.iter().filter_map(Arg::get_long).collect();
    format!(
        "unknown key {key:?}; the keys are the flags of `cipgw run`: {}",
        known.join(", ")
    )
}

/// Appends `--flag value...` for one key, unless the flag was given.
fn push(
    arg: &Arg,
    value: &toml::Value,
    given: &ArgMatches,
    out: &mut Vec<OsString>,
) -> Result<(), String> {
    if given.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
        return Ok(());
    }
    let flag = format!(
        "--{}",
        arg.get_long().expect("settable args are long flags")
    );
    if !arg.get_action().takes_values() {
        // A switch such as --kubernetes: `true` sets it, `false` leaves it.
        match value {
            toml::Value::Boolean(true) => out.push(flag.into()),
            toml::Value::Boolean(false) => {}
            other => {
                return Err(format!(
                    "expected true or false, not a {}",
                    other.type_str()
                ))
            }
        }
        return Ok(());
    }
    let values = match value {
        toml::Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    for item in values {
        let text = match item {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            other => {
                return Err(format!(
                    "expected a string, number or list, not a {}",
                    other.type_str()
                ))
            }
        };
        // `--flag=value`: a value starting with '-' (a nice value) stays a value.
        out.push(format!("{flag}={text}").into());
    }
    Ok(())
}
