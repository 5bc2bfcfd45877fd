//! Placeholder: being written.

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Tokenize text files into train.bin / val.bin / meta.json.
    Prepare {},
}

pub fn run(_cmd: DataCommand) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
