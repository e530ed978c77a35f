import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  // .tmp/: scratch and test tools (the schemathesis venv ships JavaScript of its own).
  { ignores: ["dist/**", "node_modules/**", "data/**", "coverage/**", ".tmp/**", "eslint.config.js", ".dependency-cruiser.cjs"] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_" }],
    },
  },
);
