//! The command line's grammar (clap derive): global options, subcommands,
//! and the help text that documents defaults, environment and exit codes.

// The doc comments below are clap's help text, read by people at a
// terminal: HOST[:PORT] and <hex> there are neither links nor HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

const LONG_ABOUT: &str = "\
Pulls OCI images into verified, uncompressed layer tars, reads an image's \
files without unpacking it, and maintains the store, with the same library \
and settings a container runtime uses.";

const AFTER_LONG_HELP: &str = "\
Settings come from, first to last: flags, environment variables (shown with \
each option), the config file, built-in defaults. The config file is \
$OCI_CACHE_CONFIG, else $XDG_CONFIG_HOME/oci-cache/config.toml, else \
~/.config/oci-cache/config.toml (a missing default file is fine; one named \
with --config or $OCI_CACHE_CONFIG must exist). Its keys are the long flag \
names: store, dst, auth-file, hosts-dir, ca, platform, deadline, \
stall-timeout (strings), insecure-registry and mirror (arrays of strings); \
any other key is an error.

Defaults, for every user including root: the store is \
$XDG_CACHE_HOME/oci-cache/store (else ~/.cache/oci-cache/store) and the \
layer tars go to $XDG_CACHE_HOME/oci-cache/layers (else \
~/.cache/oci-cache/layers); both are created if missing. Loopback \
registries are reached over plain HTTP, every other one over HTTPS unless \
named with --insecure-registry.

Exit codes:
   0  success
   1  verify found corrupt files and did not remove them
   2  usage: bad flag, reference or platform; unreadable config/auth/CA file
   3  not found           4  unauthorized       5  unsupported
   6  digest mismatch     7  invalid content    8  network
   9  io                 10  canceled (Ctrl-C) 11  timeout
  14  internal error
Library errors are 1 minus the C status code (OCI_E_NOT_FOUND = -2 gives 3). \
Every error is one line on stderr starting with 'oci-cache: '.";

/// Parses the process's arguments; every subcommand's long help ends with
/// the settings, defaults and exit codes too.
pub fn parse() -> Result<Cli, clap::Error> {
    let command = Cli::command().mut_subcommands(|sub| sub.after_long_help(AFTER_LONG_HELP));
    let mut matches = command.try_get_matches()?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// oci-cache: pull OCI images into verified layer tars.
#[derive(Debug, Parser)]
#[command(
    name = "oci-cache",
    version,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The options every subcommand honours; each also comes from the
/// environment and the config file.
#[derive(Debug, Args)]
pub struct Global {
    /// The OCI image layout the images are kept in [default:
    /// $XDG_CACHE_HOME/oci-cache/store]
    #[arg(long, global = true, env = "OCI_CACHE_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Use no store: references resolve at the registry and nothing but
    /// the layer tars is kept (ls, rm, prune, du and verify need a store)
    #[arg(long, global = true, conflicts_with = "store")]
    pub no_store: bool,
    /// Where the layer tars go, as dst/sha256/<hex>, with their indexes in
    /// dst/tar-index [default: $XDG_CACHE_HOME/oci-cache/layers]
    #[arg(long, global = true, env = "OCI_CACHE_DST", value_name = "DIR")]
    pub dst: Option<PathBuf>,
    /// Read registry credentials from this docker/podman auth file only
    /// [default: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
    /// $DOCKER_CONFIG/config.json, ~/.docker/config.json]
    #[arg(long, global = true, env = "OCI_CACHE_AUTH_FILE", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Read containerd-style DIR/<registry>/hosts.toml mirror and TLS settings
    #[arg(long, global = true, env = "OCI_CACHE_HOSTS_DIR", value_name = "DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// Trust the CA certificates in this PEM file for every registry
    #[arg(long, global = true, env = "OCI_CACHE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Reach HOST[:PORT] over plain HTTP (repeatable; the environment
    /// variable takes a comma-separated list)
    #[arg(
        long,
        global = true,
        env = "OCI_CACHE_INSECURE_REGISTRY",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub insecure_registry: Vec<String>,
    /// Try mirror MIRROR (host[:port]) before REGISTRY (as references name
    /// it; Docker Hub is index.docker.io), in the order given (repeatable;
    /// the environment variable takes a comma-separated list)
    #[arg(
        long,
        global = true,
        env = "OCI_CACHE_MIRROR",
        value_name = "REGISTRY=MIRROR",
        value_delimiter = ','
    )]
    pub mirror: Vec<String>,
    /// The platform picked from multi-platform images, os/arch[/variant]
    /// [default: this host's]
    #[arg(
        long,
        global = true,
        env = "OCI_CACHE_PLATFORM",
        value_name = "PLATFORM"
    )]
    pub platform: Option<String>,
    /// Give up on the command after this long, e.g. 30s, 5m [default: none]
    #[arg(
        long,
        global = true,
        env = "OCI_CACHE_DEADLINE",
        value_name = "DURATION"
    )]
    pub deadline: Option<String>,
    /// Give up when a registry sends nothing for this long; 0 turns it off
    /// [default: 60s]
    #[arg(
        long,
        global = true,
        env = "OCI_CACHE_STALL_TIMEOUT",
        value_name = "DURATION"
    )]
    pub stall_timeout: Option<String>,
    /// Print JSON for scripts: one document per command; pull prints one
    /// object per line per event
    #[arg(long, global = true)]
    pub json: bool,
    /// Read defaults from this config file [default: see below]
    #[arg(long, global = true, env = "OCI_CACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch an image into the store and its layer tars into dst; prints
    /// each layer tar's path, bottom first
    #[command(
        long_about = "Fetches REF's manifest and config for the platform, and every layer \
        not already in dst, verified, into dst/sha256/<hex of diff_id>. Prints each layer tar's \
        path, bottom first. On a terminal, stderr shows a progress bar per layer and a summary; \
        with --json, stdout carries one JSON object per line: {\"event\":\"progress\",...} as \
        layers move, then {\"event\":\"done\",...,\"layers\":[{\"diff_id\",\"path\",\"size\"}]}."
    )]
    Pull {
        /// An image reference, e.g. docker.io/library/alpine:3 or
        /// HOST[:PORT]/REPO@sha256:HEX
        reference: String,
    },
    /// Print the digest a reference names (store first, then the registry)
    Resolve {
        /// An image reference, e.g. docker.io/library/alpine:3 or
        /// HOST[:PORT]/REPO@sha256:HEX
        reference: String,
    },
    /// Print an image's reference, digest, media type, manifest and config as JSON
    Inspect {
        /// An image reference, e.g. docker.io/library/alpine:3 or
        /// HOST[:PORT]/REPO@sha256:HEX
        reference: String,
    },
    /// List the store's images: REFERENCE, DIGEST and SIZE (bytes of the
    /// store's blobs it reaches), tab-separated
    Ls,
    /// Drop a reference from the store; its blobs stay until prune
    Rm {
        /// An image reference, e.g. docker.io/library/alpine:3 or
        /// HOST[:PORT]/REPO@sha256:HEX
        reference: String,
    },
    /// Remove the store's blobs and dst's layer tars no image reaches;
    /// prints the files and bytes freed
    Prune,
    /// Print bytes and files of the store, dst's layer tars and their indexes
    Du,
    /// Re-hash every store blob and layer tar and re-check every index;
    /// exits 1 if any is corrupt, unless --repair removed them
    Verify {
        /// Remove corrupt files (the next pull fetches them again)
        #[arg(long)]
        repair: bool,
    },
    /// Write a file of an image to stdout, read through its layer tars
    Cat {
        /// An image reference, e.g. docker.io/library/alpine:3 or
        /// HOST[:PORT]/REPO@sha256:HEX
        reference: String,
        /// An absolute path in the image; symlinks are followed inside it
        path: String,
    },
    /// List a directory of an image like `ls -l`: mode, uid:gid, size, name
    LsFiles {
        /// An image reference, e.g. docker.io/library/alpine:3 or
        /// HOST[:PORT]/REPO@sha256:HEX
        reference: String,
        /// The directory to list
        #[arg(default_value = "/")]
        dir: String,
        /// List subdirectories too, with full paths
        #[arg(short = 'R', long)]
        recursive: bool,
    },
}
