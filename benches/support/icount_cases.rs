//! The command line of the `icount*` benches: `NAME CASE PACKETS`, each
//! case a function of the packet count.

/// Runs the case the command line names with its packet count, or
/// exits 64 saying what the bench takes.
pub fn run(bench: &str, cases: &[(&str, &dyn Fn(usize))]) {
    let names: Vec<&str> = cases.iter().map(|(name, _)| *name).collect();
    let mut args = std::env::args().skip(1);
    let (Some(case), Some(packets)) = (args.next(), args.next()) else {
        eprintln!("usage: {bench} CASE PACKETS (CASE: {})", names.join(", "));
        std::process::exit(64);
    };
    let Ok(packets) = packets.parse::<usize>() else {
        eprintln!("{bench}: PACKETS must be a number, not {packets:?}");
        std::process::exit(64);
    };
    match cases.iter().find(|(name, _)| *name == case) {
        Some((_, run)) => run(packets),
        None => {
            eprintln!("{bench}: no case {case:?} (cases: {})", names.join(", "));
            std::process::exit(64);
        }
    }
}
