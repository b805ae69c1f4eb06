//! `cipgw completions SHELL` and `cipgw man`: shell completions
//! (clap_complete) and the man page (clap_mangen) generated from the same
//! clap definitions as `--help`, so they never disagree with the flags.

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = super::command();
    clap_complete::generate(args.shell, &mut cmd, "cipgw", &mut std::io::stdout());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {}

/// The man page of `cipgw` and, after it, one section per subcommand, in
/// roff on standard output (`cipgw man > cipgw.1`).
pub fn man(_args: ManArgs) -> anyhow::Result<()> {
    let mut cmd = super::command();
    cmd.build();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // Each subcommand's options, as its own SUBCOMMAND page section.
        // A `&'static str` for clap's names (without its `string`
        // feature); one per subcommand, for a command that prints and exits.
        let name: &'static str = Box::leak(format!("cipgw-{}", sub.get_name()).into_boxed_str());
        let sub = sub.clone().name(name).bin_name(name);
        let man = clap_mangen::Man::new(sub);
        man.render_title(&mut out)?;
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
    }
    use std::io::Write as _;
    std::io::stdout().write_all(&out)?;
    Ok(())
}
