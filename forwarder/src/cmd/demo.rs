//! placeholder
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}
pub fn demo(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("demo: in progress")
}
