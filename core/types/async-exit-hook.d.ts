// async-exit-hook ships no types; only what core/db/embedded.ts uses.
declare module 'async-exit-hook' {
  interface ExitHook {
    hookedEvents(): string[];
    unhookEvent(event: string): void;
  }
  const exitHook: ExitHook;
  export default exitHook;
}
