<?php
// The checks of the PHP smoke tests in this directory: each counts, and
// the first that fails stops the run (exit 1) with what it checked.

$checks = 0;

function check($cond, $what) {
    global $checks;
    if (!$cond) {
        fwrite(STDERR, "check failed: $what\n");
        exit(1);
    }
    $checks++;
}

// The line a smoke test ends with when every check held.
function report() {
    global $checks;
    echo "ok: $checks checks\n";
}
