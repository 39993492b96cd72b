//! Each subcommand over one `ImageCache`: the library calls it makes and
//! the text or JSON it prints. Ctrl-C cancels the call in flight.

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use oci_cache::{CancelToken, Digest, FileKind, Image, ImageCache, Stat, View};
use serde_json::{json, Value};

use crate::args::Command;
use crate::config::Settings;
use crate::output::{print, print_json, Failure, EXIT_CORRUPT};
use crate::progress::Display;

/// Runs `command`; Ok is the exit code of a command that ran to its end.
pub async fn run(command: Command, settings: Settings) -> Result<u8, Failure> {
    let cancel = CancelToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.cancel();
        }
    });
    let base = ImageCache::new(settings.cache.clone())?;
    let display = match &command {
        Command::Pull { .. } => Display::choose(settings.json),
        _ => Display::None,
    };
    let mut call = settings.call_options(cancel);
    if display.wanted() {
        let shown = display.clone();
        call = call.progress(move |p| shown.report(p));
    }
    let cache = base.with_call_options(call);
    let json = settings.json;
    match command {
        Command::Pull { reference } => pull(&cache, &settings, &reference, &display).await,
        Command::Resolve { reference } => {
            let digest = cache.resolve(&reference).await?;
            if json {
                print_json(&json!({"reference": reference, "digest": digest.to_string()}))?;
            } else {
                print(&format!("{digest}\n"))?;
            }
            Ok(0)
        }
        Command::Inspect { reference } => {
            let image = fetch(&cache, &settings, &reference).await?;
            print_json(&inspect(&image)?)?;
            Ok(0)
        }
        Command::Ls => {
            let images = cache.list().await?;
            if json {
                let list: Vec<Value> = images
                    .iter()
                    .map(|i| {
                        json!({"reference": i.reference, "digest": i.digest.to_string(),
                               "media_type": i.media_type, "size": i.size})
                    })
                    .collect();
                print_json(&Value::Array(list))?;
            } else {
                let mut text = String::new();
                for i in &images {
                    let _ = writeln!(text, "{}\t{}\t{}", i.reference, i.digest, i.size);
                }
                print(&text)?;
            }
            Ok(0)
        }
        Command::Rm { reference } => {
            cache.remove(&reference).await?;
            if json {
                print_json(&json!({"removed": reference}))?;
            }
            Ok(0)
        }
        Command::Prune => {
            let pruned = cache.prune(Some(settings.dst()?)).await?;
            if json {
                print_json(&json!({"files": pruned.files, "bytes": pruned.bytes}))?;
            } else {
                print(&format!(
                    "removed {} files, {} bytes\n",
                    pruned.files, pruned.bytes
                ))?;
            }
            Ok(0)
        }
        Command::Du => {
            let du = cache.disk_usage(Some(settings.dst()?)).await?;
            if json {
                print_json(&json!({
                    "store_bytes": du.store_bytes, "store_files": du.store_files,
                    "dst_bytes": du.dst_bytes, "dst_files": du.dst_files,
                    "index_bytes": du.index_bytes, "index_files": du.index_files,
                }))?;
            } else {
                print(&format!(
                    "store\t{}\t{}\ndst\t{}\t{}\nindex\t{}\t{}\n",
                    du.store_bytes,
                    du.store_files,
                    du.dst_bytes,
                    du.dst_files,
                    du.index_bytes,
                    du.index_files
                ))?;
            }
            Ok(0)
        }
        Command::Verify { repair } => verify(&cache, &settings, repair).await,
        Command::Cat { reference, path } => {
            let view = view(&cache, &settings, &reference).await?;
            cat(&view, &path)?;
            Ok(0)
        }
        Command::LsFiles {
            reference,
            dir,
            recursive,
        } => {
            let view = view(&cache, &settings, &reference).await?;
            let mut text = String::new();
            list_dir(&view, &dir, recursive, &mut text)?;
            print(&text)?;
            Ok(0)
        }
    }
}

async fn fetch(cache: &ImageCache, settings: &Settings, reference: &str) -> Result<Image, Failure> {
    Ok(cache
        .fetch_image(reference, settings.platform.as_ref())
        .await?)
}

async fn view(cache: &ImageCache, settings: &Settings, reference: &str) -> Result<View, Failure> {
    let image = fetch(cache, settings, reference).await?;
    Ok(cache.view(&image, settings.dst()?).await?)
}

/// `dst/<alg>/<hex>`, where the library puts a layer's tar.
fn tar_path(dst: &Path, diff_id: &Digest) -> PathBuf {
    dst.join(diff_id.algorithm()).join(diff_id.hex())
}

async fn pull(
    cache: &ImageCache,
    settings: &Settings,
    reference: &str,
    display: &Display,
) -> Result<u8, Failure> {
    let started = Instant::now();
    let dst = settings.dst()?;
    let pulled = async {
        let image = fetch(cache, settings, reference).await?;
        let files = cache.rootfs(&image, dst).await?;
        Ok::<_, Failure>((image, files))
    }
    .await;
    let (image, files) = match pulled {
        Ok(pulled) => pulled,
        Err(failure) => {
            display.abandon();
            return Err(failure);
        }
    };
    let mut layers = Vec::new();
    let mut total = 0;
    for (layer, file) in image.layers().iter().zip(&files) {
        let size = file
            .metadata()
            .map_err(|e| {
                Failure::from(oci_cache::Error::io(format!("reading a layer's size: {e}")))
            })?
            .len();
        total += size;
        layers.push((
            layer.diff_id().to_string(),
            tar_path(dst, layer.diff_id()),
            size,
        ));
    }
    let took = started.elapsed();
    display.finish(&format!(
        "{}: {} layers, {} bytes in {:.1?}",
        image.reference(),
        layers.len(),
        total,
        took
    ));
    if settings.json {
        let layers: Vec<Value> = layers
            .iter()
            .map(|(diff_id, path, size)| json!({"diff_id": diff_id, "path": path, "size": size}))
            .collect();
        print_json(&json!({
            "event": "done",
            "reference": image.reference(),
            "digest": image.digest().to_string(),
            "layers": layers,
            "bytes": total,
            "seconds": took.as_secs_f64(),
        }))?;
    } else {
        let mut text = String::new();
        for (_, path, _) in &layers {
            let _ = writeln!(text, "{}", path.display());
        }
        print(&text)?;
    }
    Ok(0)
}

fn inspect(image: &Image) -> Result<Value, Failure> {
    let parse = |what: &str, bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes).map_err(|e| {
            Failure::from(oci_cache::Error::invalid_content(format!(
                "{what} of {}: {e}",
                image.reference()
            )))
        })
    };
    let manifest = parse("manifest", image.manifest())?;
    let config = parse("config", image.config())?;
    let media_type = manifest.get("mediaType").cloned().unwrap_or(Value::Null);
    Ok(json!({
        "reference": image.reference(),
        "digest": image.digest().to_string(),
        "media_type": media_type,
        "manifest": manifest,
        "config": config,
    }))
}

async fn verify(cache: &ImageCache, settings: &Settings, repair: bool) -> Result<u8, Failure> {
    let found = cache.verify(Some(settings.dst()?), repair).await?;
    let bad = found.corrupt.len() + found.corrupt_indexes.len();
    if settings.json {
        let paths = |list: &[PathBuf]| list.iter().map(|p| json!(p)).collect::<Vec<_>>();
        print_json(&json!({
            "checked": found.checked,
            "corrupt": paths(&found.corrupt),
            "indexes_checked": found.indexes_checked,
            "corrupt_indexes": paths(&found.corrupt_indexes),
            "repaired": repair,
        }))?;
    } else {
        let mut text = String::new();
        let what = if repair { "removed" } else { "corrupt" };
        for path in &found.corrupt {
            let _ = writeln!(text, "{what}\t{}", path.display());
        }
        for path in &found.corrupt_indexes {
            let _ = writeln!(text, "{what} index\t{}", path.display());
        }
        let _ = writeln!(
            text,
            "checked {} files and {} indexes: {bad} corrupt",
            found.checked, found.indexes_checked
        );
        print(&text)?;
    }
    Ok(if bad > 0 && !repair { EXIT_CORRUPT } else { 0 })
}

fn cat(view: &View, path: &str) -> Result<(), Failure> {
    let (mut file, offset, size) = view.open_file(path)?;
    let io =
        |e: std::io::Error| Failure::from(oci_cache::Error::io(format!("reading {path}: {e}")));
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut out = std::io::stdout().lock();
    match std::io::copy(&mut file.take(size), &mut out).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::from(
            oci_cache::Error::io(format!("copying {path} to stdout: {e}")),
        )),
        _ => Ok(()),
    }
}

fn list_dir(view: &View, dir: &str, recursive: bool, text: &mut String) -> Result<(), Failure> {
    let mut subdirs = Vec::new();
    for name in view.read_dir(dir)? {
        let full = if dir.ends_with('/') {
            format!("{dir}{name}")
        } else {
            format!("{dir}/{name}")
        };
        let stat = view.stat(&full)?;
        let shown = if recursive { &full } else { &name };
        let _ = write!(
            text,
            "{} {}:{} {} {}",
            mode_text(&stat),
            stat.uid,
            stat.gid,
            stat.size,
            shown
        );
        if stat.kind == FileKind::Symlink {
            let _ = write!(text, " -> {}", view.read_link(&full)?);
        }
        text.push('\n');
        if recursive && stat.kind == FileKind::Directory {
            subdirs.push(full);
        }
    }
    for sub in subdirs {
        list_dir(view, &sub, recursive, text)?;
    }
    Ok(())
}

/// `drwxr-xr-x`, with s/S and t/T as ls shows setuid, setgid and sticky.
fn mode_text(stat: &Stat) -> String {
    let kind = match stat.kind {
        FileKind::Regular => '-',
        FileKind::Directory => 'd',
        FileKind::Symlink => 'l',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
        FileKind::Fifo => 'p',
        #[allow(unreachable_patterns)]
        _ => '?',
    };
    let m = stat.mode;
    let mut text = String::from(kind);
    for (shift, special, set, unset) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (m >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(match (bits & 1 != 0, m & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    text
}
