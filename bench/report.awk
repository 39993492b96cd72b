# bench/report.awk: one of bench/run's results tables, from two tab-separated files:
#   SIZES  image, compression, layers, tar bytes, blob bytes, repetitions
#   RAW    image, compression, job, repetition, numbers: a, z: seconds, peak
#          RSS KiB, CPU seconds, index bytes, tar bytes; b, c, l: seconds;
#          d: median µs, p99 µs; f (one line per process pair): first
#          oci_fetch_image ms, oci_cache_resolve ms; i: rebuild ms, hash ms,
#          index cost ms, index CPU ms; v: open + stat median µs, p99 µs,
#          scan median µs, p99 µs, stat median µs, p99 µs, paths
# Prints a Markdown table (medians over repetitions; a/b, a/c and a/a′ are
# medians of the per-repetition ratios; RSS is the largest seen) and the
# issue's targets for that network, saying by how much each missed one is
# missed. Columns for jobs that did not run (d on the WAN, z without a
# baseline) are left out. The first call of a new cache (job f) is a line
# under the table, for the rows that have it. Where job i ran, a table of
# the tar index follows (its size from a; its cost from i, and cost / a as
# the median of the per-repetition ratios); where job v ran, one of the
# view (scan/view likewise).
# Usage: awk -v net=lo|wan -f bench/report.awk SIZES RAW
BEGIN { FS = "\t"; MiB = 1048576 }

FNR == NR { rows[++nrows] = $1 SUBSEP $2; size[$1, $2] = $3 "\t" $4 "\t" $5 "\t" $6; next }

{
    row = $1 SUBSEP $2
    add(row, $3, $5)
    seen[$3] = 1
    if ($3 == "a") {
        add(row, "rss", $6 / 1024); add(row, "cpu", $7); a[row, $4] = $5
        if ($9 > 0) add(row, "index %", $8 / $9 * 100)
        add(row, "index KiB", $8 / 1024)
    }
    if ($3 == "z") { add(row, "rss", $6 / 1024); z[row, $4] = $5 }
    if ($3 == "b") b[row, $4] = $5
    if ($3 == "c") c[row, $4] = $5
    if ($3 == "d") add(row, "p99", $6)
    if ($3 == "f") add(row, "resolve", $6)
    if ($3 == "i") { add(row, "hash", $6); add(row, "cost", $7); add(row, "cost cpu", $8); cost[row, $4] = $7 }
    if ($3 == "v") {
        add(row, "open p99", $6); add(row, "scan", $7); add(row, "scan p99", $8)
        add(row, "stat", $9); add(row, "stat p99", $10); add(row, "paths", $11)
        if ($5 > 0) add(row, "scan/view", $7 / $5)
    }
}

function add(row, key, value) { values[row, key, ++count[row, key]] = value }

function median(row, key,    n, i, j, v, sorted) {
    n = count[row, key]
    if (!n) return ""
    for (i = 1; i <= n; i++) {
        v = values[row, key, i]
        for (j = i - 1; j >= 1 && sorted[j] > v; j--) sorted[j + 1] = sorted[j]
        sorted[j + 1] = v
    }
    return n % 2 ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
}

function largest(row, key,    i, m) {
    for (i = 1; i <= count[row, key]; i++) if (values[row, key, i] > m) m = values[row, key, i]
    return m
}

function fmt(format, value) { return value == "" ? "–" : sprintf(format, value) }

function miss(what, value, limit) {
    if (value != "" && value + 0 > limit)
        missed = missed sprintf("- missed: %s %s %s = %.2f, target ≤ %s: %.0f%% over\n",
            id[1], id[2], what, value, limit, (value / limit - 1) * 100)
}

END {
    head = "| image | comp. | layers | tar MiB | blobs MiB | reps | a: oci-cache s | b: skopeo+unpack s | c: floor s | a/b | a/c | largest layer s | a peak RSS MiB |"
    rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    if (seen["z"]) { head = head " a′: baseline s | a/a′ |"; rule = rule " ---: | ---: |" }
    if (seen["d"]) { head = head " d: warm median µs | d: warm p99 µs |"; rule = rule " ---: | ---: |" }
    print head
    print rule
    for (i = 1; i <= nrows; i++) {
        row = rows[i]
        split(row, id, SUBSEP)
        split(size[row], s, "\t")
        for (k in a) {
            split(k, key, SUBSEP)
            if (key[1] SUBSEP key[2] != row) continue
            if (b[k] > 0) add(row, "a/b", a[k] / b[k])
            if (c[k] > 0) add(row, "a/c", a[k] / c[k])
            if (z[k] > 0) add(row, "a/z", a[k] / z[k])
            if ((k in cost) && a[k] > 0) add(row, "cost/a", cost[k] / (a[k] * 1000) * 100)
        }
        ab = median(row, "a/b"); ac = median(row, "a/c"); rss = largest(row, "rss"); warm = median(row, "d")
        line = sprintf("| %s | %s | %d | %.0f | %.0f | %d | %s | %s | %s | %s | %s | %s | %s |",
            id[1], id[2], s[1], s[2] / MiB, s[3] / MiB, s[4],
            fmt("%.2f", median(row, "a")), fmt("%.2f", median(row, "b")), fmt("%.2f", median(row, "c")),
            fmt("%.2f", ab), fmt("%.2f", ac), fmt("%.2f", median(row, "l")), fmt("%.0f", rss))
        if (seen["z"]) line = line sprintf(" %s | %s |", fmt("%.2f", median(row, "z")), fmt("%.3f", median(row, "a/z")))
        if (seen["d"]) line = line sprintf(" %s | %s |", fmt("%.0f", warm), fmt("%.0f", median(row, "p99")))
        print line
        if (net == "wan") {
            miss("a/b", ab, id[1] == "big" ? 0.25 : 0.35)
        } else {
            miss("a/b", ab, id[1] == "big" ? 0.35 : 0.30)
            miss("a/c", ac, 0.9)
            miss("warm median µs", warm, 50)
        }
        miss("peak RSS MiB", rss, 64)
    }
    for (i = 1; i <= nrows; i++) {
        row = rows[i]
        if (!count[row, "f"]) continue
        split(row, id, SUBSEP)
        first = median(row, "f"); resolve = median(row, "resolve")
        printf "\nFirst call of a new cache, %s %s (%d processes, median): oci_fetch_image %.1f ms;" \
            " oci_cache_resolve from the store %.2f ms.\n", id[1], id[2], count[row, "f"], first, resolve
        miss("first oci_fetch_image ms", first, 10)
        miss("first oci_cache_resolve ms", resolve, 2)
    }
    if (seen["i"]) {
        print "\nThe tar index: its size (a's index files against its tars) and its cost (job i):\n"
        print "| image | comp. | tar MiB | indexes KiB | indexes / tars % | i: rebuild ms | i: hash alone ms |" \
            " index cost ms | cost / a % | index CPU ms | a CPU s |"
        print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for (i = 1; i <= nrows; i++) {
            row = rows[i]
            if (!count[row, "index %"]) continue
            split(row, id, SUBSEP)
            split(size[row], s, "\t")
            share = median(row, "index %"); per_a = median(row, "cost/a")
            printf "| %s | %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s |\n", id[1], id[2], s[2] / MiB,
                median(row, "index KiB"), fmt("%.2f", share), fmt("%.1f", median(row, "i")),
                fmt("%.1f", median(row, "hash")), fmt("%.1f", median(row, "cost")), fmt("%.1f", per_a),
                fmt("%.1f", median(row, "cost cpu")), fmt("%.2f", median(row, "cpu"))
            miss("indexes / tars %", share, 2)
            miss("index cost / a %", per_a, 3)
        }
    }
    if (seen["v"]) {
        print "\nThe view (job v), warm, in µs:\n"
        print "| image | comp. | paths | open + deep stat median | p99 | header scan median | p99 | scan/view |" \
            " stat median | stat p99 |"
        print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for (i = 1; i <= nrows; i++) {
            row = rows[i]
            if (!count[row, "v"]) continue
            split(row, id, SUBSEP)
            view_open = median(row, "v"); stat = median(row, "stat")
            printf "| %s | %s | %d | %.0f | %.0f | %.0f | %.0f | %.1f | %.2f | %.2f |\n", id[1], id[2],
                median(row, "paths"), view_open, median(row, "open p99"), median(row, "scan"),
                median(row, "scan p99"), median(row, "scan/view"), stat, median(row, "stat p99")
            miss("view open + deep stat median µs", view_open, 1000)
            miss("stat median µs", stat, 2)
        }
    }
    if (net == "wan")
        printf "\nTargets: a/b ≤ 0.25 for the 1 GiB images, ≤ 0.35 for debian; peak RSS ≤ 64 MiB.\n"
    else
        printf "\nTargets: a/b ≤ 0.30 for debian, ≤ 0.35 for the 1 GiB images; a/c ≤ 0.9;" \
            " warm median ≤ 50 µs for 5 layers; peak RSS ≤ 64 MiB; first call of a new cache:" \
            " oci_fetch_image ≤ 10 ms, oci_cache_resolve from the store ≤ 2 ms; indexes ≤ 2%% of the tar" \
            " bytes, their cost ≤ 3%% of a; a view's open + deep stat ≤ 1000 µs, each further stat ≤ 2 µs" \
            " median.\n"
    printf "%s", missed == "" ? "All targets met.\n" : missed
}
