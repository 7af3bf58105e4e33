//! Options and connection shared by the tools that talk to the control
//! plane (`pcr`, `pcr-test`): where it is, how to log in, and the output form.

use std::path::PathBuf;
use std::time::Duration;

use commands::client::MasterClient;

/// Global options of every control-plane tool.
#[derive(Debug, clap::Args)]
pub struct MasterArgs {
    /// The control plane's address.
    #[arg(
        long,
        global = true,
        env = "PCR_CONTROL_PLANE",
        default_value = "127.0.0.1:7000"
    )]
    pub control_plane: String,
    /// File holding the token to log in with (else $PCR_TOKEN, else the
    /// file $PCR_TOKEN_FILE names; none is needed on a loopback server
    /// without a token file).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

// The command line of a control-plane tool: the global options and its
// subcommands `C`. (A plain comment, not a doc comment: clap would take a
// doc comment as every tool's help text; each tool gives its own through
// `parse_as`.)
#[derive(Debug, clap::Parser)]
#[command(version)]
pub struct Cli<C: clap::Subcommand> {
    #[command(flatten)]
    pub master: MasterArgs,
    #[command(subcommand)]
    pub command: C,
}

impl<C: clap::Subcommand> Cli<C> {
    /// Parses the process's arguments as the tool `name`, described in its
    /// help by `about`; exits with clap's message on bad arguments.
    pub fn parse_as(name: &'static str, about: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let mut cmd = Self::command().name(name).about(about);
        let matches = cmd.get_matches_mut();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
    }
}

/// Why a tool could not reach or log in to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Client(#[from] commands::client::ClientError),
    #[error(transparent)]
    Token(#[from] commands::auth::AuthError),
}

impl MasterArgs {
    /// Reads the token and logs in; must run inside a `LocalSet`.
    pub async fn connect(&self) -> Result<MasterClient, ConnectError> {
        let token = commands::auth::client_token(self.token_file.as_deref())?;
        Ok(
            MasterClient::connect_with_token(&self.control_plane, Duration::from_secs(5), &token)
                .await?,
        )
    }
}
