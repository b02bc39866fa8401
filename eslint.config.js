// Lint: typescript-eslint's recommended rules; `any` is an error so exported signatures stay typed.
// The layers (docs/design.md, Layout) have no cycles: the agent and the controllers share
// @vessel/runtime and @vessel/api and never import each other, lower layers never import higher
// ones, and no package reaches into guest/ by a relative path.
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/**', 'dist/**', 'coverage/**', '.cache/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  layer(['packages/**'], []),
  layer(['packages/agent/**'], ['@vessel/controllers', '**/controllers/*'], 'the agent uses @vessel/runtime and @vessel/api, never the controllers'),
  layer(
    ['packages/controllers/**'],
    ['@vessel/agent', '**/agent/*', '@vessel/apiserver', '**/apiserver/*'],
    'the controllers never import the agent, and reach the API server only through @vessel/client',
  ),
  // Their tests run against the API server's real semantics in-process (@vessel/apiserver/testing).
  layer(['packages/controllers/testing/**', 'packages/controllers/**/*.test.ts'], ['@vessel/agent', '**/agent/*'], 'the controllers never import the agent'),
  layer(
    ['packages/runtime/**', 'packages/api/**', 'packages/client/**'],
    ['@vessel/controllers', '@vessel/agent', '@vessel/apiserver', '@vessel/cli', '**/controllers/*', '**/agent/*'],
    'a lower layer never imports a higher one',
  ),
);

/** Refuses imports matching `patterns` in `files`, and relative paths into guest/ (a later layer's rule replaces an earlier one's, so each repeats it). */
function layer(files, patterns, message) {
  const guest = { group: ['**/guest/*'], message: 'import the test guest as @vessel/guest' };
  return { files, rules: { 'no-restricted-imports': ['error', { patterns: patterns.length ? [{ group: patterns, message }, guest] : [guest] }] } };
}
