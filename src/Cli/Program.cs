using Kiln.Cli;

return await KilnCommandLine.RunAsync(args, CliConsole.FromProcess());
