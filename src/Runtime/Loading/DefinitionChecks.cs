using System.Globalization;

namespace Kiln.Loading;

/// <summary>
/// What a model file states against what the model definition does, checked when the generated Load binds a file:
/// a statement that changes the math (a sliding window, a soft cap, a norm's epsilon, a rope base or width, rope
/// scaling, a tokenizer) must be read by the definition, or agree with it — never silently ignored.
/// </summary>
public static class DefinitionChecks
{
    /// <summary>Throws when <paramref name="file"/> states <paramref name="key"/>, which <paramref name="model"/> does not read.</summary>
    public static void RequireRead(ModelFile file, string key, string model)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (!file.Metadata.TryGetValue(key, out var value)) return;
        if (IsExpertCount(key) && value.TryGetInt64(out long experts) && experts == 0) return; // no mixture: nothing stated
        throw new ModelLoadException(file.Path, key, null,
            $"the file states {key} = {value}, but {model} does not read it, so its forward would compute without it; bind it with [Hyper(\"{key}\")] and use it, or load the file with a definition that does.");
    }

    /// <summary>Throws when <paramref name="file"/> states <paramref name="key"/> with another value than the forward's <paramref name="used"/>.</summary>
    public static void RequireAgrees(ModelFile file, string key, long used, string model, string what)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (!file.TryGetInt(key, out long stated) || stated == used) return;
        throw new ModelLoadException(file.Path, key, null,
            $"the file states {key} = {stated.ToString(CultureInfo.InvariantCulture)}, but {model}'s forward uses {used.ToString(CultureInfo.InvariantCulture)} ({what}).");
    }

    /// <summary>Throws when <paramref name="file"/> holds a tensor the definition did not bind (<paramref name="bound"/>): its forward would ignore it.</summary>
    public static void RequireAllBound(ModelFile file, IReadOnlySet<string> bound, string model)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(bound);
        foreach (var name in file.Tensors.Keys)
        {
            if (bound.Contains(name)) continue;
            throw new ModelLoadException(file.Path, $"tensor '{name}'", file.Tensors[name].Offset,
                $"{model} does not read this tensor, so its forward would compute without it ({file.Tensors.Count - bound.Count} of the file's {file.Tensors.Count} tensors are not bound); a definition must account for every tensor.");
        }
    }

    private static bool IsExpertCount(string key) =>
        key.EndsWith(".expert_count", StringComparison.Ordinal) || key is "num_local_experts" or "num_experts";

    /// <summary>
    /// Throws when the file's rotary fraction (a Hugging Face config's partial_rotary_factor: the share of each head
    /// the rope turns) gives other rotary dimensions than the forward's <paramref name="rotary"/> of <paramref name="headDim"/>.
    /// </summary>
    public static void RequireRotaryFactorAgrees(ModelFile file, string key, int rotary, int headDim, string model)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (!file.TryGetFloat(key, out double factor)) return;
        long stated = (long)(factor * headDim); // as transformers computes it
        if (stated == rotary) return;
        throw new ModelLoadException(file.Path, key, null,
            $"the file states {key} = {factor.ToString(CultureInfo.InvariantCulture)}, {stated.ToString(CultureInfo.InvariantCulture)} of each head's {headDim} dimensions, but {model}'s rope turns {rotary.ToString(CultureInfo.InvariantCulture)}.");
    }

    /// <summary>
    /// Throws when the file asks for rope scaling (linear, YaRN, Llama 3's, …), which no definition applies yet: GGUF's
    /// {arch}.rope.scaling.type other than "none", or a Hugging Face config's rope_scaling other than "default".
    /// </summary>
    public static void RejectRopeScaling(ModelFile file, string architecture, string model)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (file.Naming == ModelNaming.HuggingFace)
        {
            const string Prefix = "rope_scaling.";
            bool stated = false;
            foreach (var key in file.Metadata.Keys) stated |= key == "rope_scaling" || key.StartsWith(Prefix, StringComparison.Ordinal);
            if (!stated) return;
            string kind = file.TryGetString(Prefix + "rope_type", out string ropeType) ? ropeType
                : file.TryGetString(Prefix + "type", out string type) ? type : "unnamed";
            if (kind != "default")
                throw new ModelLoadException(file.Path, "rope_scaling", null, $"the config asks for {kind} rope scaling, which {model}'s forward does not apply.");
            return;
        }
        string scalingKey = architecture + ".rope.scaling.type";
        if (file.TryGetString(scalingKey, out string scaling) && scaling.Length > 0 && scaling != "none")
            throw new ModelLoadException(file.Path, scalingKey, null, $"the file asks for {scaling} rope scaling, which {model}'s forward does not apply.");
    }

    /// <summary>Throws when the file's tokenizer.ggml.model is not <paramref name="expected"/>, the tokenizer the definition was written for.</summary>
    public static void RequireTokenizer(ModelFile file, string expected, string model)
    {
        ArgumentNullException.ThrowIfNull(file);
        const string key = "tokenizer.ggml.model";
        if (file.TryGetString(key, out string stated) && stated != expected)
            throw new ModelLoadException(file.Path, key, null, $"the file's tokenizer is \"{stated}\", but {model} is defined for \"{expected}\".");
    }
}
