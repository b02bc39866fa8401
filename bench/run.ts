/**
 * `npm run bench`: runs every benchmark in sequence (crud, watch, then clone) and prints each
 * one's figures, then a summary. Every figure is a ratio against a baseline measured in the
 * same run; see bench/README.md. Exits 1 if any check failed (counts, missed events).
 *   BENCH_ONLY=crud|watch|clone runs just one.
 * The import benchmark (bench/import.bench.ts, about 6 minutes) is run on its own.
 */
import { runClone } from './clone.bench.ts';
import { runCrud } from './crud.bench.ts';
import { errText, fmtRatio, now, printResult, type BenchResult } from './lib.ts';
import { runWatch } from './watch.bench.ts';

const benches: [string, () => Promise<BenchResult>][] = [
  ['crud', runCrud],
  ['watch', runWatch],
  ['clone', runClone],
];

const only = process.env.BENCH_ONLY;
const started = now();
const results: BenchResult[] = [];
for (const [name, run] of benches) {
  if (only && only !== name) continue;
  console.log(`\n### ${name}`);
  try {
    const r = await run();
    printResult(r);
    results.push(r);
  } catch (e) {
    results.push({ bench: name, figures: [], problems: [`crashed: ${errText(e)}`], seconds: 0 });
  }
}

console.log(`\n################ summary (${((now() - started) / 1000).toFixed(0)} s; ratios: measured / same-run baseline)`);
for (const r of results) {
  console.log(`${r.bench}`);
  for (const f of r.figures) console.log(`  ${fmtRatio(f.ratio).padStart(8)}  ${f.name}`);
  for (const p of r.problems) console.log(`  PROBLEM: ${p}`);
}
const failed = results.some((r) => r.problems.length > 0);
console.log(failed ? '\nsome checks FAILED (see PROBLEM lines)' : '\nall checks passed');
process.exit(failed ? 1 : 0);
