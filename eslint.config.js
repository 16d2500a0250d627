// Lint that guards the layers (docs/design.md §10): what each folder may import. `npm test` runs it, and
// test/unit/lint-layers.test.ts proves each rule fails on a deliberate violation.
import tseslint from 'typescript-eslint';

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

/**
 * Refuses every import but the listed ones (`x/` allows that folder's modules, anything else one module);
 * type-only imports are always allowed.
 */
const onlyImports = (message, allowed) => {
  const alternatives = allowed.map((a) => (a.endsWith('/') ? `${escape(a)}[^/]+$` : `${escape(a)}$`));
  return {
    '@typescript-eslint/no-restricted-imports': [
      'error',
      { patterns: [{ regex: `^(?!(${alternatives.join('|')}))`, message, allowTypeImports: true }] },
    ],
  };
};

export default tseslint.config(
  { ignores: ['node_modules/**', '.data/**', '.tools/**', '.test-data/**', 'test-results/**', 'bench/results/**', 'web/**'] },
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.base],
    rules: {
      // Type-only imports say so (with verbatimModuleSyntax in tsconfig.json): a workflow bundle never pulls in
      // an activity's runtime code by accident.
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      'no-debugger': 'error',
    },
  },
  {
    // Deterministic code only: the workflow SDK, the pure domain, and its own definitions.
    files: ['workflows/**/*.ts'],
    rules: onlyImports('workflows/ may import only @temporalio/workflow, @temporalio/common, domain/ and types (docs/design.md §10)', [
      '@temporalio/workflow',
      '@temporalio/common',
      './',
      '../domain/',
    ]),
  },
  {
    // Pure rules: no I/O, no framework.
    files: ['domain/**/*.ts'],
    rules: onlyImports('domain/ is pure: it may import only domain/ and types (docs/design.md §10)', ['./']),
  },
  {
    // The HTTP layer goes through services/, never to the database directly.
    files: ['api/**/*.ts'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['**/db/*', '**/db/**', 'pg'],
              message: 'api/ reaches the database through services/ (docs/design.md §10); row types may be imported as types',
              allowTypeImports: true,
            },
          ],
        },
      ],
    },
  },
);
