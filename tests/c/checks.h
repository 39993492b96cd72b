/*
 * checks.h: the check table the C test programs share, so that each knows
 * how many checks it planned without a count kept by hand. Every check
 * macro leaves a check_site and a pointer to it in the section
 * "oci_checks"; the linker gathers the pointers and provides the section's
 * bounds. checks_report() then prints "plan: N checks" and, last,
 * "P passed, F failed": P counts the planned checks that ran and never
 * failed (a check in a loop is one check), F the failed runs plus the
 * planned checks that never ran. The drivers (tests/c_api.rs,
 * tests/registry_access.rs) want P == N and F == 0.
 */
#ifndef OCI_TEST_CHECKS_H
#define OCI_TEST_CHECKS_H

#include <stdio.h>

struct check_site {
    const char *file;
    int line;
    const char *what;
    /* 0 for a check of a constant, such as CHECK(0) in a branch that runs
     * only after another check failed: it can only fail, so it is not part
     * of the plan. */
    int planned;
    int runs;
    int failures;
};

/* GNU ld and lld define these for a section whose name is a C identifier.
 * The section holds pointers, not the sites: the compiler may pad and align
 * a larger object, which would break stepping through it as an array. */
extern struct check_site *const __start_oci_checks[];
extern struct check_site *const __stop_oci_checks[];

/* Declares `check_site_` (and its table entry) in the enclosing block: use
 * it first in a check macro's own do { } while (0). */
#define CHECK_SITE(what_, planned_)                                                              \
    static struct check_site check_site_ = {__FILE__, __LINE__, (what_), (planned_), 0, 0};     \
    static struct check_site *const check_site_entry_                                            \
        __attribute__((section("oci_checks"), used)) = &check_site_

/* Whether `cond` can pass at all. GCC folds this in a static initializer
 * without evaluating `cond`. */
#define CHECK_PLANNED(cond) (!(__builtin_constant_p(cond) && !(cond)))

/* Counts one run of `site`; returns `ok`. */
static int check_run(struct check_site *site, int ok) {
    site->runs++;
    if (!ok)
        site->failures++;
    return ok;
}

/* Prints the plan and the tally as described above (with list_unrun, each
 * planned check that never ran on stderr) and returns F. */
static int checks_report(int failed_runs, int list_unrun) {
    int planned = 0, passed = 0, failed = failed_runs;
    for (struct check_site *const *entry = __start_oci_checks; entry < __stop_oci_checks; entry++) {
        const struct check_site *site = *entry;
        if (!site->planned)
            continue;
        planned++;
        if (site->runs == 0) {
            failed++;
            if (list_unrun)
                fprintf(stderr, "%s:%d: NEVER RAN: %s\n", site->file, site->line, site->what);
        } else if (site->failures == 0) {
            passed++;
        }
    }
    printf("plan: %d checks\n%d passed, %d failed\n", planned, passed, failed);
    fflush(stdout);
    return failed;
}

#endif
