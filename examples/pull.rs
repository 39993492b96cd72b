//! Pulls an image into a local store and writes its layer tars, the way a
//! runtime would: `pull REFERENCE STORE DST [PLATFORM]`. Prints one line per
//! layer, bottom first: its diff_id and the size of its tar.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use oci_cache::{CacheOptions, ImageCache, Platform};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if !(4..=5).contains(&args.len()) {
        eprintln!("usage: {} REFERENCE STORE DST [PLATFORM]", args[0]);
        return ExitCode::from(2);
    }
    match pull(&args[1], &args[2], &args[3], args.get(4)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pull: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn pull(
    reference: &str,
    store: &str,
    dst: &str,
    platform: Option<&String>,
) -> oci_cache::Result<()> {
    let mut options = CacheOptions::new().store(store);
    if let Some(platform) = platform {
        options = options.platform(platform.parse::<Platform>()?);
    }
    let cache = ImageCache::new(options)?;
    let started = Instant::now();
    let image = cache.fetch_image(reference, None).await?;
    std::fs::create_dir_all(dst).map_err(|e| oci_cache::Error::io(format!("{dst}: {e}")))?;
    let files = cache.rootfs(&image, Path::new(dst)).await?;
    println!("{} {}", image.reference(), image.digest());
    for (layer, file) in image.layers().iter().zip(&files) {
        let size = file
            .metadata()
            .map_err(|e| oci_cache::Error::io(e.to_string()).with_source(e))?
            .len();
        println!("{} {size}", layer.diff_id());
    }
    eprintln!("{} layers in {:.2?}", files.len(), started.elapsed());
    Ok(())
}
