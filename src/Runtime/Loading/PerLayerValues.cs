using System.Globalization;

namespace Kiln.Loading;

/// <summary>
/// A per-layer hyperparameter (a [Hyper] of type int[] or float[]), as the generated Load reads it: a GGUF array with
/// one value per layer (llama.cpp's jamba writes attention.head_count_kv so, 0 marking a Mamba layer), or a scalar
/// every layer shares. Any other length, or a value that is not a number, is the file's error, naming the key.
/// </summary>
public static class PerLayerValues
{
    /// <summary>
    /// The <paramref name="layers"/> integers <paramref name="key"/> states; when the file lacks it,
    /// <paramref name="fallback"/> (the member's initializer), which must then hold one value per layer.
    /// </summary>
    public static int[] ReadInts(ModelFile file, string key, int layers, int[]? fallback, bool required)
    {
        var values = Read(file, key, layers, fallback is null ? null : Array.ConvertAll(fallback, v => (double)v), required, integer: true);
        var result = new int[layers];
        for (int layer = 0; layer < layers; layer++)
        {
            double value = values[layer];
            if (value < int.MinValue || value > int.MaxValue)
                throw new ModelLoadException(file.Path, key, null, $"layer {layer}'s value {value.ToString(CultureInfo.InvariantCulture)} does not fit a 32-bit integer.");
            result[layer] = (int)value;
        }
        return result;
    }

    /// <summary>As <see cref="ReadInts"/>, for a float[] member.</summary>
    public static float[] ReadFloats(ModelFile file, string key, int layers, float[]? fallback, bool required)
    {
        var values = Read(file, key, layers, fallback is null ? null : Array.ConvertAll(fallback, v => (double)v), required, integer: false);
        return Array.ConvertAll(values, v => (float)v);
    }

    private static double[] Read(ModelFile file, string key, int layers, double[]? fallback, bool required, bool integer)
    {
        ArgumentNullException.ThrowIfNull(file);
        string number = integer ? "an integer" : "a number";
        if (!file.Metadata.TryGetValue(key, out var entry))
        {
            if (required || fallback is null) throw new ModelLoadException(file.Path, key, null, "required per-layer hyperparameter is missing.");
            if (fallback.Length == 1) return Broadcast(fallback[0], layers);
            if (fallback.Length != layers)
                throw new ModelLoadException(file.Path, key, null, $"absent, and the definition's default holds {fallback.Length} values for the file's {layers} layers.");
            return fallback;
        }
        if (entry.Value is not Array array)
        {
            if (TryNumber(entry, integer, out double shared)) return Broadcast(shared, layers);
            throw new ModelLoadException(file.Path, key, entry.Offset, $"is {entry}, not {number} or an array of one per layer.");
        }
        if (array.Length != layers)
            throw new ModelLoadException(file.Path, key, entry.Offset, $"holds {array.Length} values, but the file has {layers} layers: a per-layer value needs one per layer (or one scalar for all).");
        var values = new double[layers];
        for (int layer = 0; layer < layers; layer++)
        {
            var element = new MetadataValue(array.GetValue(layer)!);
            if (!TryNumber(element, integer, out values[layer]))
                throw new ModelLoadException(file.Path, key, entry.Offset, $"layer {layer}'s value {element} is not {number}.");
        }
        return values;
    }

    private static bool TryNumber(MetadataValue value, bool integer, out double number)
    {
        if (!integer) return value.TryGetDouble(out number);
        bool ok = value.TryGetInt64(out long whole);
        number = whole;
        return ok;
    }

    private static double[] Broadcast(double value, int layers)
    {
        var values = new double[layers];
        Array.Fill(values, value);
        return values;
    }
}
