//! The command line against its own definition: every flag of `run` is a
//! settings-file key and shows its default in `--help`, the defaults
//! `--help` shows are the ones applied, and kube-proxy's ways of writing
//! values are taken. The flag lists come from clap, never from a hand list,
//! so a flag added later is checked the same way.

use std::ffi::OsString;
use std::io::Write as _;
use std::time::Duration;

use super::*;

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("cipgw")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

fn parse_run(args: &[&str]) -> run::RunArgs {
    match parse(argv(args)) {
        Ok(Cli {
            command: Command::Run(run),
            ..
        }) => *run,
        Ok(other) => panic!("{args:?} parsed as {other:?}"),
        Err(ParseError::Clap(e)) => panic!("{args:?}: {}", e.render()),
        Err(ParseError::SettingsFile(e)) => panic!("{args:?}: {e}"),
    }
}

fn settings_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(text.as_bytes())
        .expect("writing the settings file");
    file
}

/// The `[default: X]` a flag's help shows, if any: clap's own (from a
/// `default_value`) or one written in its doc comment.
fn shown_default(arg: &clap::Arg) -> Option<String> {
    if let Some(value) = arg.get_default_values().first() {
        if !arg.is_hide_default_value_set() {
            return Some(value.to_string_lossy().into_owned());
        }
    }
    let help = arg.get_help()?.to_string();
    let start = help.rfind("[default: ")? + "[default: ".len();
    let end = start + help[start..].find(']')?;
    Some(help[start..end].to_owned())
}

#[test]
fn every_flag_shows_a_default_and_is_a_settings_key() {
    let cli = command();
    let args = settings_file::settable_args(&cli);
    assert!(args.len() > 20, "only {} settable flags found", args.len());
    let given = cli
        .clone()
        .try_get_matches_from(argv(&["run"]))
        .expect("`cipgw run` alone parses");
    let (_, given) = given.subcommand().expect("run");
    // One file with every key: a flag's shown default where clap takes
    // it as a value (so the file must change nothing), else a placeholder
    // that only has to be recognised as a key.
    let mut file = toml::Table::new();
    let mut applied = String::new();
    for arg in &args {
        let long = arg.get_long().expect("settable flags are long flags");
        let value = if arg.get_action().takes_values() {
            let shown = shown_default(arg)
                .unwrap_or_else(|| panic!("--{long}: `--help` shows no [default: ...]"));
            let accepted = cli
                .clone()
                .try_get_matches_from(argv(&["run", &format!("--{long}={shown}")]))
                .is_ok();
            if accepted {
                // A TOML basic string: the shown defaults are plain ASCII.
                applied.push_str(&format!("{long} = {shown:?}\n"));
            }
            toml::Value::String(shown)
        } else {
            toml::Value::Boolean(false)
        };
        file.insert(long.into(), value);
    }
    let out = settings_file::args_from_table(&args, &file, given)
        .expect("every flag is a settings-file key");
    for arg in args.iter().filter(|a| a.get_action().takes_values()) {
        let long = arg.get_long().expect("long");
        assert!(
            out.iter()
                .any(|a| a.to_string_lossy().starts_with(&format!("--{long}="))),
            "--{long}: the settings file's key was not turned into the flag"
        );
    }
    assert!(
        applied.lines().count() > 15,
        "too few defaults checked:\n{applied}"
    );
    // The shown defaults, written into a file, are what applies without it.
    let file = settings_file(&applied);
    let path = file.path().to_str().expect("UTF-8 path");
    let base = ["run", "--iface", "eth0", "--control-file", "services.yaml"];
    let with_file: Vec<&str> = base.iter().copied().chain(["--config", path]).collect();
    let plain = run::settings_for_test(parse_run(&base));
    let filled = run::settings_for_test(parse_run(&with_file));
    assert_eq!(
        plain, filled,
        "a default shown by --help differs from the one applied"
    );
}

#[test]
fn settings_file_keys_tables_and_flags_over_file() {
    let file = settings_file(
        "iface = [\"eth1\", \"eth2\"]\ncontrol-file = \"s.yaml\"\nadmin = \"127.0.0.1:1000\"\n\
         log-level = \"debug\"\nworker-nice = -5\nbusy-poll = false\n\
         [conntrack]\nmax = 1000\nconntrack-tcp-timeout-established = \"1h30m\"\n",
    );
    let path = file.path().to_str().expect("UTF-8 path");
    let cli = match parse(argv(&[
        "run",
        "--config",
        path,
        "--admin",
        "127.0.0.1:2000",
    ])) {
        Ok(cli) => cli,
        Err(e) => panic!("{e:?}"),
    };
    assert_eq!(cli.log.log_level.as_deref(), Some("debug"));
    let Command::Run(run) = cli.command else {
        panic!("not run")
    };
    let s = run::settings_for_test(*run);
    assert_eq!(s.ifaces, ["eth1", "eth2"]);
    assert_eq!(s.admin.to_string(), "127.0.0.1:2000", "the flag wins");
    assert_eq!(s.io.worker_nice, -5);
    assert_eq!(s.conntrack.max_flows, Some(1000));
    assert_eq!(
        s.conntrack.timeouts.tcp_established,
        Duration::from_secs(5400)
    );

    let file = settings_file("protocl = \"UDP\"\n");
    let path = file.path().to_str().expect("UTF-8 path");
    match parse(argv(&["run", "--config", path])) {
        Err(ParseError::SettingsFile(e)) => assert!(e.contains("\"protocl\""), "{e}"),
        other => panic!("an unknown key must be refused: {other:?}"),
    }
    let file = settings_file("rx-batch = \"many\"\n");
    let path = file.path().to_str().expect("UTF-8 path");
    match parse(argv(&["run", "--config", path])) {
        Err(ParseError::SettingsFile(e)) => assert!(e.contains("--rx-batch"), "{e}"),
        other => panic!("a bad value must be refused: {other:?}"),
    }
}

#[test]
fn kube_proxy_style_values() {
    let run = parse_run(&[
        "run",
        "--iface",
        "eth0",
        "--control-file",
        "s.yaml",
        "--cluster-cidr",
        "198.18.0.0/16,198.19.0.0/16",
        "--cluster-cidr=198.18.7.0/24",
        "--admin",
        "localhost:9477",
        "--min-sync-period",
        "1m30s",
        "--conntrack-tcp-timeout-established",
        "24h0m0s",
    ]);
    let s = run::settings_for_test(run);
    let cidrs: Vec<String> = s.cluster_cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(cidrs, ["198.18.0.0/16", "198.19.0.0/16", "198.18.7.0/24"]);
    assert!(s.admin.ip().is_loopback(), "localhost resolves to loopback");
    assert_eq!(s.admin.port(), 9477);
    assert_eq!(s.min_sync_period, Duration::from_secs(90));
    assert_eq!(
        s.conntrack.timeouts.tcp_established,
        Duration::from_secs(86_400)
    );
}

#[test]
fn service_cidrs_one_per_family_from_flags_and_the_settings_file() {
    use cipgw_config::IpFamily;
    let base = ["run", "--iface", "eth0", "--control-file", "s.yaml"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let s = run::settings_for_test(parse_run(&with(
        &base,
        &[
            "--service-cidr",
            "198.18.100.0/24",
            "--service-cidr",
            "2001:2:0:ff::/112",
            "--cluster-cidr",
            "198.18.0.0/16,2001:2::/48",
        ],
    )));
    assert_eq!(s.service_cidrs.primary(), IpFamily::V4);
    assert_eq!(
        s.service_cidrs.to_string(),
        "198.18.100.0/24,2001:2:0:ff::/112"
    );
    assert_eq!(s.cluster_cidrs.len(), 2);
    let comma = run::settings_for_test(parse_run(&with(
        &base,
        &["--service-cidr=2001:2:0:ff::/112,198.18.100.0/24"],
    )));
    assert_eq!(comma.service_cidrs.primary(), IpFamily::V6);
    assert!(comma.service_cidrs.is_dual());
    // Without the flag: the default, IPv4 alone.
    let default = run::settings_for_test(parse_run(&base));
    assert_eq!(
        default.service_cidrs.to_string(),
        cipgw_config::settings::DEFAULT_SERVICE_CIDR
    );
    // A second CIDR of one family is an error naming the flag.
    let error = run::settings_error_for_test(parse_run(&with(
        &base,
        &[
            "--service-cidr",
            "198.18.100.0/24",
            "--service-cidr",
            "198.19.0.0/16",
        ],
    )));
    assert_eq!(
        error,
        "--service-cidr: 198.19.0.0/16 is a second IPv4 CIDR after 198.18.100.0/24; \
         give at most one per family"
    );
    // The settings file takes a list, as for the other list flags.
    let file = settings_file(
        "iface = [\"eth1\"]\ncontrol-file = \"s.yaml\"\n\
         service-cidr = [\"2001:2:0:ff::/112\", \"198.18.100.0/24\"]\n",
    );
    let path = file.path().to_str().expect("UTF-8 path");
    let s = run::settings_for_test(parse_run(&["run", "--config", path]));
    assert_eq!(
        s.service_cidrs.families().collect::<Vec<_>>(),
        [IpFamily::V6, IpFamily::V4]
    );
}

#[test]
fn flags_are_grouped_in_help() {
    let mut cli = command();
    cli.build();
    let help = cli
        .find_subcommand_mut("run")
        .expect("run")
        .render_help()
        .to_string();
    for heading in [
        "Gateway:",
        "Control:",
        "Conntrack:",
        "I/O tuning:",
        "Admin:",
        "Logging:",
    ] {
        assert!(help.contains(heading), "no {heading} section in:\n{help}");
    }
}

#[test]
fn deploy_config_map_is_read_by_run() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/20-configmap.yaml");
    let text = std::fs::read_to_string(path).expect("deploy/20-configmap.yaml");
    let config_map: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let toml = config_map["data"]["cipgw.toml"]
        .as_str()
        .expect("data.cipgw.toml");
    let file = settings_file(toml);
    let path = file.path().to_str().expect("UTF-8 path");
    let s = run::settings_for_test(parse_run(&["run", "--config", path]));
    assert!(matches!(
        s.source,
        cipgw_config::settings::Source::Kubernetes { .. }
    ));
    assert_eq!(
        s.metrics.to_string(),
        "0.0.0.0:9478",
        "Prometheus scrapes it from other nodes"
    );
    assert!(
        s.admin.ip().is_loopback(),
        "the JSON views stay on loopback"
    );
}

#[test]
fn dns_upstreams_come_from_the_dns_table_of_the_settings_file() {
    let file = settings_file(
        "iface = [\"eth1\"]\ncontrol-file = \"s.yaml\"\ncluster-cidr = [\"198.18.0.0/24\"]\n\
         [dns]\naddress = [\"198.18.100.53\"]\n\
         dns-upstream = [\"198.18.3.2\", \"198.18.3.3:5353\"]\n",
    );
    let path = file.path().to_str().expect("UTF-8 path");
    let s = run::settings_for_test(parse_run(&["run", "--config", path]));
    assert_eq!(
        s.dns.upstreams,
        [
            "198.18.3.2:53".parse().expect("static"),
            "198.18.3.3:5353".parse().expect("static")
        ]
    );
    s.validate().expect("with --cluster-cidr and --dns-address");
}

/// The words of `text`'s row whose second word is `first` (a VIP:port
/// or an endpoint).
fn services_row(text: &str, first: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|r| r.get(1).map(String::as_str) == Some(first))
        .unwrap_or_else(|| panic!("no row for {first} in:\n{text}"))
}

/// A `/api/services` endpoint with `flows` inactive flows and (when
/// `packets` is given) counters.
fn services_endpoint(
    ip: &str,
    active: u64,
    inactive: u64,
    packets: Option<u64>,
) -> serde_json::Value {
    serde_json::json!({
        "ip": ip, "port": 8080, "pod": "web-0", "state": "ready",
        "ready": true, "serving": true, "terminating": false,
        "active_flows": active, "inactive_flows": inactive,
        "packets": packets, "bytes": packets.map(|p| 100 * p),
        "flows": packets.map(|p| p / 2),
    })
}

/// A dual-stack Service from a gateway before per-VIP figures (no
/// `vips`): each row shows its own family's endpoints' sums, not the
/// port's sums twice, and IPv6 rows show real figures.
#[test]
fn services_lists_a_block_per_vip_with_its_family() {
    let endpoint = services_endpoint;
    let view: cipgw::admin::ServicesView = serde_json::from_value(serde_json::json!({
        "generation": 3,
        "counted": true,
        "services": [{
            "namespace": "shop", "name": "web", "kind": "ClusterIP",
            "vip": "2001:2:0:ff::20", "cluster_ip": "2001:2:0:ff::20",
            "cluster_ips": ["2001:2:0:ff::20", "198.18.100.20"],
            "ip_families": ["IPv6", "IPv4"], "ip_family_policy": "RequireDualStack",
            "active_flows": 3, "inactive_flows": 4, "affinity_seconds": null,
            "packets": 70, "bytes": 7000, "flows": 35,
            "ports": [{
                "name": "http", "protocol": "TCP", "port": 80, "target_port": "8080",
                "lb_algorithm": "random", "maglev_fingerprint": null,
                "active_flows": 3, "inactive_flows": 4,
                "packets": 70, "bytes": 7000, "flows": 35,
                "endpoints": [
                    endpoint("198.18.3.1", 1, 0, Some(10)),
                    endpoint("2001:2:0:3::1", 2, 4, Some(60)),
                ],
            }],
        }],
    }))
    .expect("a services view");
    assert!(
        view.services[0].ports[0].vips.is_empty(),
        "an older gateway's JSON"
    );
    let text = services::render(&view);
    let find = |first: &str| services_row(&text, first);
    // IPv4 first (sorted by VIP), each with its family's endpoint only.
    assert_eq!(find("198.18.100.20:80")[6..], ["1", "0", "5", "10", "1000"]);
    // (Endpoint rows have two empty columns: ActiveConn is the 5th word.)
    assert_eq!(find("198.18.3.1:8080")[4..], ["1", "0", "5", "10", "1000"]);
    // The IPv6 VIP and endpoint: their own flows and counters.
    assert_eq!(
        find("[2001:2:0:ff::20]:80")[6..],
        ["2", "4", "30", "60", "6000"]
    );
    assert_eq!(
        find("[2001:2:0:3::1]:8080")[4..],
        ["2", "4", "30", "60", "6000"]
    );
    let v4_row = text.find("198.18.100.20:80").expect("listed");
    let v6_row = text.find("[2001:2:0:ff::20]:80").expect("listed");
    assert!(v4_row < v6_row, "{text}");
    assert!(!text.contains("not yet forwarded"), "{text}");
}

/// From a gateway with per-VIP figures: each VIP's row shows that VIP's
/// flows, counters and Maglev table (`maglev:` and 8 hex digits), an
/// IPv6-only Maglev Service included; a single-VIP Service from an older
/// gateway shows the port's sums and fingerprint.
#[test]
fn services_show_each_vips_flows_counters_and_maglev_table() {
    let endpoint = services_endpoint;
    let vip = |vip: &str, fingerprint: Option<&str>, active: u64, inactive: u64, packets: u64| {
        serde_json::json!({
            "vip": vip, "maglev_fingerprint": fingerprint,
            "active_flows": active, "inactive_flows": inactive,
            "packets": packets, "bytes": 100 * packets, "flows": packets / 2,
        })
    };
    let service = |name: &str, vips: &[&str], port: serde_json::Value| {
        serde_json::json!({
            "namespace": "shop", "name": name, "kind": "ClusterIP",
            "vip": vips[0], "cluster_ip": vips[0], "cluster_ips": vips,
            "ip_families": [], "ip_family_policy": "",
            "active_flows": port["active_flows"], "inactive_flows": port["inactive_flows"],
            "affinity_seconds": null,
            "packets": port["packets"], "bytes": port["bytes"], "flows": port["flows"],
            "ports": [port],
        })
    };
    let port =
        |lb: &str, fingerprint: Option<&str>, sums: [u64; 3], endpoints: serde_json::Value| {
            serde_json::json!({
                "name": null, "protocol": "TCP", "port": 80, "target_port": "8080",
                "lb_algorithm": lb, "maglev_fingerprint": fingerprint,
                "active_flows": sums[0], "inactive_flows": sums[1],
                "packets": sums[2], "bytes": 100 * sums[2], "flows": sums[2] / 2,
                "endpoints": endpoints,
            })
        };
    let (f4, f6, f_only6, f_old) = (
        "0123456789abcdef",
        "fedcba9876543210",
        "00ff00ff00ff00ff",
        "aaaabbbbccccdddd",
    );
    let mut dual = port(
        "maglev",
        Some(f4),
        [3, 5, 70],
        serde_json::json!([
            endpoint("198.18.3.1", 1, 1, Some(10)),
            endpoint("2001:2:0:3::1", 2, 4, Some(60)),
        ]),
    );
    dual["vips"] = serde_json::json!([
        vip("198.18.100.20", Some(f4), 1, 1, 10),
        vip("2001:2:0:ff::20", Some(f6), 2, 4, 60),
    ]);
    let mut only6 = port(
        "maglev",
        Some(f_only6),
        [0, 2, 8],
        serde_json::json!([endpoint("2001:2:0:3::2", 0, 2, Some(8))]),
    );
    only6["vips"] = serde_json::json!([vip("2001:2:0:ff::30", Some(f_only6), 0, 2, 8)]);
    // From an older gateway: no `vips`; its sums keep what removed
    // endpoints counted, so they exceed the endpoints'.
    let old = port(
        "maglev",
        Some(f_old),
        [1, 1, 50],
        serde_json::json!([endpoint("198.18.3.3", 1, 1, Some(20))]),
    );
    let view: cipgw::admin::ServicesView = serde_json::from_value(serde_json::json!({
        "generation": 4,
        "counted": true,
        "services": [
            service("dual", &["198.18.100.20", "2001:2:0:ff::20"], dual),
            service("only6", &["2001:2:0:ff::30"], only6),
            service("old", &["198.18.100.40"], old),
        ],
    }))
    .expect("a services view");
    let text = services::render(&view);
    let find = |first: &str| services_row(&text, first);
    // Columns: Prot VIP:Port Service TargetPort LB Affinity ActiveConn
    // InActConn Flows Packets Bytes.
    assert_eq!(
        find("198.18.100.20:80")[4..],
        ["maglev:01234567", "None", "1", "1", "5", "10", "1000"]
    );
    assert_eq!(
        find("[2001:2:0:ff::20]:80")[4..],
        ["maglev:fedcba98", "None", "2", "4", "30", "60", "6000"]
    );
    assert_eq!(
        find("[2001:2:0:ff::30]:80")[4..],
        ["maglev:00ff00ff", "None", "0", "2", "4", "8", "800"]
    );
    assert_eq!(
        find("198.18.100.40:80")[4..],
        ["maglev:aaaabbbb", "None", "1", "1", "25", "50", "5000"]
    );
    // A dual-stack Maglev Service from an older gateway: its fingerprint
    // was the IPv4 VIP's, so the IPv6 row shows only the algorithm.
    let mut older = view.clone();
    older.services[0].ports[0].vips.clear();
    let text = services::render(&older);
    assert_eq!(
        services_row(&text, "198.18.100.20:80")[4],
        "maglev:01234567"
    );
    assert_eq!(services_row(&text, "[2001:2:0:ff::20]:80")[4], "maglev");
}
