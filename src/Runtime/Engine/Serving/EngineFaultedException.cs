namespace Kiln.Engine.Serving;

/// <summary>
/// The engine loop stopped after an unexpected error (a step of the plan threw, say): the engine takes no more
/// requests. <see cref="Exception.InnerException"/> is the error; make a new engine to go on.
/// </summary>
public sealed class EngineFaultedException(Exception fault)
    : InvalidOperationException($"The engine stopped after an error and takes no more requests: {fault.GetType().Name}: {fault.Message}", fault);
