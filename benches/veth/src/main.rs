//! `cipgw-veth-bench`: the tools `benches/veth/run.sh` drives inside its
//! namespaces. Each subcommand does one thing and prints JSON (or writes
//! files); the script owns the topology, the peers and the schedule.

mod report;
mod rules;
mod tcp;
mod udpgen;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tools of cipgw's end-to-end veth benchmark (see benches/veth/run.sh).
#[derive(Debug, Parser)]
#[command(name = "cipgw-veth-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open-loop 64-byte UDP over AF_PACKET + sendmmsg: established flows
    /// round robin, or a new flow every frame.
    UdpGen(udpgen::GenArgs),
    /// TCP server for the backend: echo (rr, crr) and sink (stream).
    TcpServer(tcp::ServerArgs),
    /// Request/response latency over one connection (HdrHistogram).
    TcpRr(tcp::ClientArgs),
    /// New connections per second: connect, one exchange, close.
    TcpCrr(tcp::ClientArgs),
    /// Bulk throughput over one connection.
    TcpStream(tcp::ClientArgs),
    /// N Services as a cipgw control file and kube-proxy's iptables and
    /// nftables rulesets.
    GenRules(rules::GenArgs),
    /// Medians, markdown table, JSON and plot from a run's raw records.
    Report(report::ReportArgs),
    /// Fails unless every expected peer and workload has a non-zero result.
    Check(report::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::UdpGen(a) => udpgen::run(a),
        Command::TcpServer(a) => tcp::serve(a),
        Command::TcpRr(a) => print(tcp::rr(a)),
        Command::TcpCrr(a) => print(tcp::crr(a)),
        Command::TcpStream(a) => print(tcp::stream(a)),
        Command::GenRules(a) => rules::run(a),
        Command::Report(a) => report::run(a),
        Command::Check(a) => report::check(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cipgw-veth-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print(report: anyhow::Result<tcp::ClientReport>) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(&report?)?);
    Ok(())
}
