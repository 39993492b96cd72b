//! Reads an image's files without unpacking it, through the view:
//! `view REFERENCE STORE DST PATH`. Lists PATH if it is a directory (name,
//! type, mode, owner, size and the layer that provides it, one per line),
//! else prints its bytes.

use std::os::unix::fs::FileExt;
use std::process::ExitCode;

use oci_cache::{CacheOptions, FileKind, ImageCache};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: {} REFERENCE STORE DST PATH", args[0]);
        return ExitCode::from(2);
    }
    match show(&args[1], &args[2], &args[3], &args[4]).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("view: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn show(reference: &str, store: &str, dst: &str, path: &str) -> oci_cache::Result<()> {
    let cache = ImageCache::new(CacheOptions::new().store(store))?;
    let image = cache.fetch_image(reference, None).await?;
    let view = cache.view(&image, dst).await?;
    let io = |e: std::io::Error| oci_cache::Error::io(e.to_string()).with_source(e);
    if view.stat(path)?.kind != FileKind::Directory {
        let (tar, offset, size) = view.open_file(path)?;
        let mut data = vec![0; size as usize];
        tar.read_exact_at(&mut data, offset).map_err(io)?;
        return std::io::Write::write_all(&mut std::io::stdout(), &data).map_err(io);
    }
    for name in view.read_dir(path)? {
        let child = format!("{}/{name}", path.trim_end_matches('/'));
        let st = view.stat(&child)?;
        let kind = match st.kind {
            FileKind::Regular => '-',
            FileKind::Directory => 'd',
            FileKind::Symlink => 'l',
            FileKind::CharDevice => 'c',
            FileKind::BlockDevice => 'b',
            FileKind::Fifo => 'p',
        };
        let target = match st.kind {
            FileKind::Symlink => format!(" -> {}", view.read_link(&child)?),
            _ => String::new(),
        };
        println!(
            "{kind}{:04o} {}:{} {:>9} layer {} {name}{target}",
            st.mode, st.uid, st.gid, st.size, st.layer
        );
    }
    Ok(())
}
